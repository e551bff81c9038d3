"""What a failed torchrun group says about itself: which rank failed first, how, and the line that says why.

torchrun started with `--log-dir D --tee 3` writes each local rank's output to
`D/<run id>/attempt_<k>/<local rank>/{stdout,stderr}.log` (and to the console), and when a rank fails it ends its
own stderr with a summary whose "Root Cause (first observed failure)" block names that rank, its exit code and
the signal that ended it. `describe_failure` turns both into one sentence, e.g.

    rank 1 (local rank 1) failed first (exit -6, SIGABRT): [enforce fail at .../pair.cc:456] op.preamble.length
    <= op.nbytes. 8 vs 4. Received data size doesn't match expected size. Is there a distributed collective
    mismatch in your code? (log: <run>/torchrun/launch-1/.../1/stderr.log)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

ROOT_CAUSE = re.compile(r"Root Cause \(first observed failure\):(.*?)(?:\n={5,}|\Z)", re.S)
RANK_FIELD = re.compile(r"^\s*rank\s*:\s*(\d+)\s*\(local_rank:\s*(\d+)\)", re.M)
EXIT_FIELD = re.compile(r"^\s*exitcode\s*:\s*(-?\d+)[^\n]*?(?:\((SIG\w+)\))?\s*$", re.M)
RANK_PREFIX = re.compile(r"^\[(?:rank\d+|default\d+)\]:\s?")
EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt|NotMet)\b[^\n]*:\s*\S")
MAX_CHARS = 400


@dataclass(frozen=True)
class RootCause:
    """The rank torchrun saw fail first, and how it ended (from torchrun's own summary)."""

    rank: int
    local_rank: int
    how: str  # "exit 1" or "exit -6, SIGABRT"


def root_cause(torchrun_stderr: str) -> Optional[RootCause]:
    """The "Root Cause (first observed failure)" block of torchrun's summary, or None when there is none."""
    block = ROOT_CAUSE.search(torchrun_stderr)
    rank = RANK_FIELD.search(block.group(1)) if block else None
    if block is None or rank is None:
        return None
    code = EXIT_FIELD.search(block.group(1))
    how = "exit ?" if code is None else f"exit {code.group(1)}" + (f", {code.group(2)}" if code.group(2) else "")
    return RootCause(int(rank.group(1)), int(rank.group(2)), how)


def error_line(text: str) -> Optional[str]:
    """The line of a rank's stderr that says what went wrong: a C++ exception's `what()`, charlab's one-line
    error, or the last Python exception line; None when the log says nothing of the kind."""
    lines = [RANK_PREFIX.sub("", line).strip() for line in text.splitlines()]
    found: Optional[str] = None
    for line in lines:
        if "what():" in line:
            found = line.split("what():", 1)[1].strip()
        elif line.startswith("charlab: error:") or EXCEPTION_LINE.match(line):
            found = line
    if found and len(found) > MAX_CHARS:
        found = found[: MAX_CHARS - 3] + "..."
    return found


def rank_log(log_dir: Path, local_rank: int) -> Optional[Path]:
    """The newest stderr log of `local_rank` under a torchrun `--log-dir`."""
    logs = sorted(Path(log_dir).glob(f"*/attempt_*/{local_rank}/stderr.log"), key=lambda p: p.stat().st_mtime)
    return logs[-1] if logs else None


def _read(path: Optional[Path]) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace") if path else ""
    except OSError:
        return ""


def describe_failure(torchrun_stderr: str, log_dir: Path, nproc: int) -> Optional[str]:
    """One sentence on a failed group: the first rank to fail, how it ended and its error line (from its log).

    Without torchrun's summary the local ranks' logs are read in order and the first error found is reported.
    None when neither names a failure (e.g. the group never started).
    """
    cause = root_cause(torchrun_stderr)
    order = list(range(nproc))
    if cause is not None:
        order = [cause.local_rank] + [local for local in order if local != cause.local_rank]
    for local in order:
        log = rank_log(log_dir, local)
        error = error_line(_read(log))
        if cause is not None and local == cause.local_rank:
            last = next((ln for ln in reversed(_read(log).splitlines()) if ln.strip()), "")
            said = error or (f"its log ends: {RANK_PREFIX.sub('', last).strip()}" if last else "it logged nothing")
            where = f" (log: {log})" if log else ""
            return f"rank {cause.rank} (local rank {local}) failed first ({cause.how}): {said}{where}"
        if error:
            return f"local rank {local}: {error} (log: {log})"
    return None
