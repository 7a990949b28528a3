"""The sentiment page's file in and out (webapp/uploads.py): reading CSV and TXT uploads, and a download that a
spreadsheet opens without running anything."""

import csv
import io
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "webapp"))
from uploads import UploadError, csv_bytes, neutralised, read_rows  # noqa: E402


@pytest.mark.parametrize("cell,shown", [
    ('=HYPERLINK("http://evil.example","click")', '\'=HYPERLINK("http://evil.example","click")'),
    ("+1+2", "'+1+2"), ("-2+3", "'-2+3"), ("@SUM(A1)", "'@SUM(A1)"), ("\tx", "'\tx"), ("\rx", "'\rx"),
    ("-0.5", "-0.5"), ("+3", "+3"), ("1e-3", "1e-3"), ("a = b", "a = b"), ("", ""), (None, ""), (0.25, "0.25"),
])
def test_a_cell_that_starts_like_a_formula_is_neutralised_and_a_number_is_not(cell, shown):
    assert neutralised(cell) == shown


def test_the_download_keeps_the_rows_and_neutralises_headers_and_cells():
    rows = [{"=cmd": '=HYPERLINK("http://evil.example","click")', "text": "fine, really", "predicted_rating": -0.5}]
    back = list(csv.reader(io.StringIO(csv_bytes(["=cmd", "text", "predicted_rating"], rows).decode())))
    assert back == [["'=cmd", "text", "predicted_rating"],
                    ['\'=HYPERLINK("http://evil.example","click")', "fine, really", "-0.5"]]


def test_a_csv_reads_by_its_header_with_quoted_commas_and_short_rows():
    body = 'id,text,,text\n1,"good, very good",x\n\n2,"bad\nfilm",y,z\n'
    columns, rows = read_rows("r.CSV", body, 10)
    assert columns == ["id", "text", "column 3", "text.1"]
    assert rows == [{"id": "1", "text": "good, very good", "column 3": "x", "text.1": ""},
                    {"id": "2", "text": "bad\nfilm", "column 3": "y", "text.1": "z"}]


def test_a_text_file_is_one_text_a_line():
    rows = [{"text": t} for t in ("good", "bad", "fine")]
    assert read_rows("a.txt", "good\n\n  \nbad\r\nfine", 10) == (["text"], rows)


@pytest.mark.parametrize("name,body,message", [
    ("a.csv", "", "no rows"), ("a.csv", "text\n", "no rows"), ("a.txt", "\n \n", "no rows"),
    ("a.csv", "a,b\n1,2,3\n", "row 2 has 3 cells"), ("a.txt", "x\n" * 11, "limit is 10"),
    ("a.csv", 'text\n"unclosed\n', None),
])
def test_unreadable_files_say_why(name, body, message):
    if message is None:  # csv reads an unclosed quote to the end of the file: one row, no error
        assert read_rows(name, body, 10)[1] == [{"text": "unclosed\n"}]
        return
    with pytest.raises(UploadError, match=message):
        read_rows(name, body, 10)
