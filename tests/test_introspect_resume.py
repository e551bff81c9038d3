"""`stage=introspect` killed mid-run (SIGKILL) and resumed: every (prompt id, sample index) exactly once."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from charlab.data.jsonl import read_jsonl
from tests.conftest import ROOT, cli_env

pytestmark = pytest.mark.integration
NO_FILTERS = [f"stage.filters.{k}=false" for k in ("empty", "truncated", "repetition", "identity_leak", "too_long")]
ARGS = ["stage=introspect", "model=tiny", "logger=none", "stage.adapter=null", "data.reflections=12",
        "data.interactions=2", "data.interaction_turns=2", "stage.save_interval=2", "student.batch_size=1",
        "student.max_new_tokens=16", *NO_FILTERS]  # fmt: skip


def lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.is_file() else 0


def test_introspect_resumes_after_a_kill(tmp_path: Path) -> None:
    first = tmp_path / "first"
    proc = subprocess.Popen(
        [sys.executable, "-m", "charlab.train", *ARGS, f"hydra.run.dir={first}"],
        cwd=ROOT, env=cli_env(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    out = first / "introspection.jsonl"
    deadline = time.time() + 120
    while lines(out) < 2 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    written = lines(out)
    assert 2 <= written < 14
    with out.open("ab") as f:  # what a crash in the middle of a write would leave
        f.write(b'{"prompt": "torn')

    second = tmp_path / "second"
    done = subprocess.run(
        [sys.executable, "-m", "charlab.train", *ARGS, "stage.resume=true", f"stage.resume_from={first}",
         f"hydra.run.dir={second}"],
        cwd=ROOT, env=cli_env(tmp_path), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    rows = read_jsonl(second / "introspection.jsonl")
    ids = [row["id"] for row in rows]
    expected = {f"reflection-{p:02d}:{k}" for p in range(10) for k in range(2) if p < 2 or k == 0}
    expected |= {"interaction-free:0", "interaction-reflective:0"}
    assert len(ids) == len(set(ids)) == 14 and set(ids) == expected  # nothing lost, nothing twice
    summary = json.loads((second / "introspect_summary.json").read_text())
    assert summary["already_done"] == written and summary["processed"] == 14 - written
    meta = json.loads((second / "meta.json").read_text())
    assert meta["parents"]["resumed_from"] == str(first)
