"""Failpoints: hold a run at a named point so that a crash test kills it in a known state, never by a race.

A test that kills a run "once two records are on disk" races the run: on a fast machine the run may finish
between the check and the kill, on a loaded one the check may come late. With `CHARLAB_HOLD` set, the run itself
stops at the point and waits to be killed, so the state a test kills is exact:

    CHARLAB_HOLD=checkpoint:2                  # after the 2nd complete checkpoint of any training loop
    CHARLAB_HOLD=checkpoint@04_sft:1           # ... the 1st one whose path contains "04_sft"
    CHARLAB_HOLD=lines@pairs.jsonl:3           # once 3 lines of a file named like that are written (whole lines)

Unset (always, outside tests), `reached` returns at once. A held run prints one line saying so and sleeps until
it is killed.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Union

ENV = "CHARLAB_HOLD"
_counts: dict[str, int] = {}


def _spec() -> tuple[str, str, int] | None:
    """(point name, path part or "", count) from the environment, or None."""
    raw = os.environ.get(ENV, "").strip()
    if not raw:
        return None
    point, _, count = raw.rpartition(":")
    name, _, where = point.partition("@")
    return name, where, int(count)


def reached(name: str, where: Union[str, Path] = "", n: int = 1) -> None:
    """Count `n` arrivals at point `name` (at path `where`); hold forever once the count `CHARLAB_HOLD` asks for
    is reached."""
    spec = _spec()
    if spec is None or spec[0] != name or (spec[1] and spec[1] not in str(where)):
        return
    key = f"{name}@{spec[1]}"
    _counts[key] = _counts.get(key, 0) + n
    if _counts[key] >= spec[2]:
        print(f"[charlab] {ENV}: holding at {name} {_counts[key]} ({where}) until killed", file=sys.stderr, flush=True)
        while True:
            time.sleep(3600)
