"""A run stopped by SIGTERM, or killed with SIGKILL (also while it writes its state), and resumed with --resume ends
with every tensor of resume/state.safetensors equal (torch.equal) to that of a run that never stopped: model,
optimizer, RNG streams, the LM's carried state. For each task, past warm-up and in the middle of an epoch.

Every run is a real process (`python -m nlp train`, or tests/interrupt.py, which sends the signal to itself at
an exact step), all with the same thread count, so that they compute alike.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import CORPUS, TINY

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}

# per task: the run (warm-up 5 steps; evaluations and periodic saves in between), where SIGTERM stops it, and
# where SIGKILL ends it (a few steps after a periodic save, which the resumed run starts from)
RUNS = {
    "lm": (["--epochs", "2", "--eval-every", "40", "--save-every", "50"], 150, 153),        # 191 steps an epoch
    "chat": (["--epochs", "3", "--eval-every", "15", "--save-every", "20"], 50, 45),        # 36 steps an epoch
    "sentiment": (["--epochs", "3", "--eval-every", "7", "--save-every", "10"], 30, 24),    # 20 steps an epoch
}


def argv(task: str, out: Path, tokenizer: Path) -> list[str]:
    return ["--task", task, "--corpus", str(CORPUS[task]), "--tokenizer", str(tokenizer), "--out", str(out),
            "--no-amp", "--warmup-steps", "5", "--log-every", "10", *TINY[task], *RUNS[task][0]]


def train(args: list[str], *interrupt: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(ROOT / "tests" / "interrupt.py"), *interrupt, "--", *args] if interrupt else \
        [sys.executable, "-m", "nlp", "train", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=600, cwd=ROOT)


def state(out: Path) -> tuple[dict, dict]:
    info = json.loads((out / "resume" / "state.json").read_text())
    return load_file(str(out / "resume" / "state.safetensors")), {k: v for k, v in info.items() if k != "id"}


def steps_per_epoch(out: Path) -> int:
    return next(r for r in log(out) if r.get("event") == "start")["steps_per_epoch"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tokenizer):
    """The uninterrupted run of each task, made once."""
    made = {}

    def get(task: str) -> tuple[dict, dict, int]:
        if task not in made:
            out = tmp_path_factory.mktemp(f"ref-{task}")
            done = train(argv(task, out, tokenizer.path))
            assert done.returncode == 0, done.stderr[-3000:]
            made[task] = (*state(out), steps_per_epoch(out))
        return made[task]
    return get


def assert_same(out: Path, ref: tuple[dict, dict, int]):
    tensors, info = state(out)
    want_tensors, want_info, _ = ref
    assert sorted(tensors) == sorted(want_tensors)
    different = [k for k in tensors if not torch.equal(tensors[k], want_tensors[k])]
    assert not different, f"{len(different)} of {len(tensors)} tensors differ: {different[:5]}"
    assert info == want_info


def log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("task", list(RUNS))
def test_stopped_by_sigterm_and_resumed_ends_exactly_as_an_uninterrupted_run(tmp_path, tokenizer, reference, task):
    ref = reference(task)
    at, per_epoch = RUNS[task][1], ref[2]
    assert at > 5 and at % per_epoch not in (0, 1)  # past warm-up, in the middle of an epoch
    args = argv(task, tmp_path / "run", tokenizer.path)
    done = train(args, "--after-step", str(at), "--signal", "TERM")
    assert done.returncode == 0, done.stderr[-3000:]
    stop = log(tmp_path / "run")[-1]
    assert stop["event"] == "stop" and stop["reason"] == "stopped by SIGTERM" and stop["step"] == at
    done = train([*args, "--resume"])
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"resuming {tmp_path / 'run'} at step {at}" in done.stderr
    assert_same(tmp_path / "run", ref)


@pytest.mark.parametrize("task", list(RUNS))
def test_killed_after_a_step_and_resumed_ends_exactly_as_an_uninterrupted_run(tmp_path, tokenizer, reference, task):
    ref = reference(task)
    at = RUNS[task][2]
    args = argv(task, tmp_path / "run", tokenizer.path)
    done = train(args, "--after-step", str(at), "--signal", "KILL")
    assert done.returncode == -signal.SIGKILL
    saved = json.loads((tmp_path / "run" / "resume" / "state.json").read_text())["step"]
    assert 0 < saved < at and saved % int(RUNS[task][0][-1]) == 0  # the last periodic save
    done = train([*args, "--resume"])
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"at step {saved}" in done.stderr
    assert_same(tmp_path / "run", ref)


@pytest.mark.parametrize("during,resumed_at", [("tensors", 100), ("between", 150)])
def test_killed_while_writing_its_state_resumes_from_the_last_complete_one(tmp_path, tokenizer, reference, during,
                                                                          resumed_at):
    """The LM run saves at 50, 100, 150...; it is killed in the third save: half-way through the tensors file
    (the step-100 state stays), or after the tensors file and before state.json (the tensors hold the step-150
    state and their own copy of its JSON)."""
    ref = reference("lm")
    args = argv("lm", tmp_path / "run", tokenizer.path)
    done = train(args, "--in-save", "3", "--while", during)
    assert done.returncode == -signal.SIGKILL
    if during == "between":
        assert json.loads((tmp_path / "run" / "resume" / "state.json").read_text())["step"] == 100  # stale
    done = train([*args, "--resume"])
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"at step {resumed_at}" in done.stderr
    assert_same(tmp_path / "run", ref)
    assert not list((tmp_path / "run" / "resume").glob(".*tmp*"))  # the half-written file was cleared away


def children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(d.name))
            except (OSError, IndexError, ValueError):
                pass
    return out


def rank_of(pid: int) -> int | None:
    env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return next((int(v[5:]) for v in env if v.startswith(b"RANK=")), None)


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the worker processes through /proc")
def test_torchrun_sigterm_to_one_rank_stops_both_cleanly_at_the_same_step(tmp_path, tokenizer):
    """Two processes (gloo on the CPU); SIGTERM goes to rank 1 alone. The ranks agree to stop after the same
    step, rank 0 saves the state with both ranks' carried LM state and RNG, and both exit 0."""
    import shutil

    if shutil.which("torchrun") is None:
        pytest.skip("torchrun not on PATH")
    out = tmp_path / "ddp"
    proc = subprocess.Popen(
        ["torchrun", "--standalone", "--nproc_per_node", "2", "-m", "nlp", "train", "--task", "lm", "--corpus",
         str(CORPUS["lm"]), "--tokenizer", str(tokenizer.path), "--out", str(out), "--epochs", "100000",
         "--log-every", "1", "--no-amp", *TINY["lm"]],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, cwd=ROOT)
    try:
        deadline = time.time() + 180
        while not ((out / "train_log.jsonl").exists() and '"train_loss"' in (out / "train_log.jsonl").read_text()):
            assert proc.poll() is None and time.time() < deadline, "the run never started training"
            time.sleep(0.2)
        workers = {rank_of(p): p for p in children(proc.pid)}
        os.kill(workers[1], signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr[-3000:]
    stop = log(out)[-1]
    assert stop["event"] == "stop" and stop["reason"] == "stopped by a signal to another process"
    tensors, info = state(out)
    assert info["step"] == stop["step"]
    assert {"carry.0.0", "carry.0.1", "carry.1.0", "carry.1.1", "rank1.rng.torch"} <= set(tensors)
    assert not torch.equal(tensors["carry.0.0"], tensors["carry.1.0"])  # each rank read its own stretch of text


def test_a_bf16_carry_resumes_in_the_weights_dtype(tmp_path):
    """A run under bf16 autocast saves a bf16 recurrent state; resumed in float32 (--no-amp, or on a CPU without
    bf16) the fused LSTM must get it in float32, or oneDNN refuses the call."""
    from nlp import train_state

    torch.manual_seed(0)
    rnn = torch.nn.LSTM(4, 3, batch_first=True)
    opt = torch.optim.AdamW(rnn.parameters())
    _, carry = rnn(torch.randn(2, 5, 4))
    carry = tuple(t.bfloat16() for t in carry)  # what the LSTM returns under bf16 autocast on a CPU that has bf16
    train_state.save(tmp_path, rnn, opt, None, carries=[carry])
    info, tensors = train_state.read(tmp_path)
    restored = train_state.restore(tmp_path, info, tensors, rnn, opt, None)
    assert all(t.dtype == torch.float32 for t in restored)
    torch.testing.assert_close(restored[0], carry[0].float())
    rnn(torch.randn(2, 5, 4), restored)  # runs in float32
