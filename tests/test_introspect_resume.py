"""`stage=introspect` killed mid-run (SIGKILL) and resumed: every (prompt id, sample index) exactly once."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from charlab.data.jsonl import read_jsonl
from tests.conftest import ROOT, cli_env, kill_when_held

pytestmark = [pytest.mark.integration, pytest.mark.timing]
NO_FILTERS = [f"stage.filters.{k}=false" for k in ("empty", "truncated", "repetition", "identity_leak", "too_long")]
ARGS = ["stage=introspect", "model=tiny", "logger=none", "stage.adapter=null", "data.reflections=12",
        "data.interactions=2", "data.interaction_turns=2", "stage.save_interval=2", "student.batch_size=1",
        "student.max_new_tokens=16", *NO_FILTERS]  # fmt: skip


def lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.is_file() else 0


def test_introspect_resumes_after_a_kill(tmp_path: Path) -> None:
    first = tmp_path / "first"
    out = first / "introspection.jsonl"
    kill_when_held([*ARGS, f"hydra.run.dir={first}"], tmp_path, "lines@introspection.jsonl:2", lambda: lines(out) >= 2)
    written = lines(out)
    assert written == 2  # held right after the 2nd record
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
