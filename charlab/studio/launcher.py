"""Start, follow and stop `python -m charlab.train <overrides>` from the Studio.

A launch is the CLI's own command in a subprocess (its own process group, so a stop reaches its workers),
started from the project root with the Studio's environment. Its console output goes to a log file and a small
JSON record under `<runs root>/.studio/launches/`, so launches survive a Studio restart and every browser
session sees them. The run directory itself is found the way a user would: the one whose `meta.json` records
this exact command, started after the launch.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Optional

from charlab.studio.configs import command_line, train_argv, working_dir
from charlab.studio.runs import RunInfo, list_runs, load_run

# Popen objects of this Studio process: polling them reaps finished children (no zombies)
_PROCS: dict[int, subprocess.Popen] = {}
_RUN_DIR_LINE = re.compile(r"run directory: (.+?)\s*$", re.M)


@dataclass
class Launch:
    """One launched run: its command, process and console log."""

    id: str
    overrides: list[str]
    argv: list[str]
    pid: int
    started_at: float
    log: str
    command: str
    stopped: bool = False
    returncode: Optional[int] = None
    run_dir: Optional[str] = None

    @property
    def record(self) -> Path:
        return Path(self.log).with_suffix(".json")

    def save(self) -> None:
        tmp = self.record.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2), encoding="utf-8")
        tmp.replace(self.record)


def launches_dir(runs_root: Path) -> Path:
    return Path(runs_root) / ".studio" / "launches"


def launch(overrides: list[str], runs_root: Path, env: Optional[dict[str, str]] = None) -> Launch:
    """Start the run the CLI would start for `overrides`; returns at once."""
    folder = launches_dir(runs_root)
    folder.mkdir(parents=True, exist_ok=True)
    launch_id = datetime.now().strftime("%Y-%m-%d_%H-%M-%S") + "_" + secrets.token_hex(3)
    log_path = folder / f"{launch_id}.log"
    argv = train_argv(list(overrides))
    child_env = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
    child_env.setdefault("CHARLAB_OUTPUT_DIR", str(runs_root))
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            argv,
            cwd=working_dir(),
            env=child_env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    _PROCS[proc.pid] = proc
    record = Launch(launch_id, list(overrides), argv, proc.pid, time.time(), str(log_path), command_line(overrides))
    record.save()
    return record


def load_launch(path: Path) -> Optional[Launch]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        return Launch(**data)
    except (OSError, ValueError, TypeError):
        return None


def list_launches(runs_root: Path) -> list[Launch]:
    """Every launch recorded under the runs root, newest first."""
    folder = launches_dir(runs_root)
    launches = [launch for p in folder.glob("*.json") if (launch := load_launch(p)) is not None]
    return sorted(launches, key=lambda launch: launch.started_at, reverse=True)


def poll(launch: Launch) -> Optional[int]:
    """The exit status (recorded once known), or None while the process runs."""
    if launch.returncode is not None:
        return launch.returncode
    proc = _PROCS.get(launch.pid)
    code: Optional[int]
    if proc is not None:
        code = proc.poll()
    else:  # started by an earlier Studio process: we can only see whether it is still alive
        code = None if _alive(launch.pid, launch.argv) else -1
    if code is not None:
        launch.returncode = code
        launch.save()
    return code


def is_running(launch: Launch) -> bool:
    return poll(launch) is None


def _alive(pid: int, argv: list[str]) -> bool:
    """Whether `pid` is still our run (not a zombie, not a recycled pid)."""
    proc = Path(f"/proc/{pid}")
    if proc.is_dir():
        try:
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
        except (OSError, IndexError):
            return False
        return state != "Z" and b"charlab.train" in cmdline
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def stop(launch: Launch, grace_s: float = 10.0) -> bool:
    """Interrupt the run like Ctrl-C (it records `failed` and closes its tracker); kill it if it lingers."""
    if not is_running(launch):
        return False
    launch.stopped = True
    launch.save()
    for sig, wait_s in ((signal.SIGINT, grace_s), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(launch.pid, sig)
        except ProcessLookupError:
            break
        deadline = time.time() + wait_s
        while time.time() < deadline:
            if poll(launch) is not None:
                return True
            time.sleep(0.2)
    return poll(launch) is not None


def run_of(launch: Launch, runs_root: Path) -> Optional[RunInfo]:
    """The run directory this launch made (None until its `meta.json` exists)."""
    if launch.run_dir is not None:  # "" once known that the run never made one (e.g. a bad override)
        return load_run(Path(launch.run_dir)) if launch.run_dir else None
    match = _RUN_DIR_LINE.findall(_read(Path(launch.log)))
    if match:
        run = load_run(Path(match[-1]))
        if run is not None:
            launch.run_dir = str(run.dir)
            launch.save()
            return run
    for run in reversed(list_runs(runs_root)):  # oldest first: a later launch of the same command is not ours
        command = run.meta.get("command")
        if isinstance(command, list) and command[1:] == launch.overrides and _started(run) >= launch.started_at - 2:
            if poll(launch) is not None:  # finished: this mapping will not change any more
                launch.run_dir = str(run.dir)
                launch.save()
            return run
    if poll(launch) is not None:
        launch.run_dir = ""
        launch.save()
    return None


def _started(run: RunInfo) -> float:
    try:
        return datetime.fromisoformat(run.started_at).timestamp()
    except ValueError:
        return 0.0


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
