"""The sentiment page's file in and out: an uploaded CSV or TXT read into rows, and the rows written back as a
CSV that a spreadsheet opens safely. The standard library's csv module, so that reading a file needs no pandas.
"""

import csv
import io
import re

# Spreadsheets run a cell that starts with one of these as a formula (OWASP, "CSV Injection")
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


class UploadError(ValueError):
    """A file that cannot be read as the page expects; the message says why, for the person who uploaded it."""


def unique(names: list[str]) -> list[str]:
    """Column names made unique and non-empty, as a spreadsheet user would tell them apart: a repeated name gets
    .1, .2 (pandas' rule); a blank one is called "column N"."""
    seen: dict[str, int] = {}
    out = []
    for i, name in enumerate(names, 1):
        name = name.strip() or f"column {i}"
        base = name
        while name in seen:
            seen[base] += 1
            name = f"{base}.{seen[base]}"
        seen.setdefault(name, 0)
        out.append(name)
    return out


def read_rows(name: str, body: str, max_rows: int) -> tuple[list[str], list[dict[str, str]]]:
    """The columns and rows of an uploaded file: a .csv by its header line, anything else one text a line
    (blank lines skipped) in a column "text". Every cell is a string. More than `max_rows` rows, no rows, or a
    row with more cells than the header is an UploadError."""
    if not name.lower().endswith(".csv"):
        rows = [{"text": line} for line in body.splitlines() if line.strip()]
        columns = ["text"]
    else:
        try:
            lines = [row for row in csv.reader(io.StringIO(body, newline="")) if any(c.strip() for c in row)]
        except csv.Error as e:
            raise UploadError(f"The CSV could not be read: {e}") from None
        if not lines:
            raise UploadError("The file has no rows.")
        columns = unique(lines[0])
        rows = []
        for number, row in enumerate(lines[1:], 2):
            if len(row) > len(columns):
                raise UploadError(f"The CSV could not be read: row {number} has {len(row)} cells, the header "
                                  f"{len(columns)}.")
            rows.append(dict(zip(columns, row + [""] * (len(columns) - len(row)))))
    if not rows:
        raise UploadError("The file has no rows.")
    if len(rows) > max_rows:
        raise UploadError(f"The file has {len(rows):,} rows; the limit is {max_rows:,}.")
    return columns, rows


def neutralised(cell) -> str:
    """A cell as text that a spreadsheet shows instead of running: one that starts like a formula (and is not a
    plain number, such as -0.5) gets a leading apostrophe, which spreadsheets hide and do not evaluate."""
    text = "" if cell is None else str(cell)
    if text.startswith(FORMULA_START) and not NUMBER.fullmatch(text):
        return "'" + text
    return text


def csv_bytes(columns: list[str], rows: list[dict]) -> bytes:
    """The rows as a UTF-8 CSV, every header and cell neutralised."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow([neutralised(c) for c in columns])
    writer.writerows([neutralised(row.get(c, "")) for c in columns] for row in rows)
    return out.getvalue().encode("utf-8")
