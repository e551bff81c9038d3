"""JSONL files that survive crashes: whole-line atomic appends, tail repair, resume by id.

Writers append complete lines with one `write` on an `O_APPEND` descriptor and flush every
`flush_every` rows (fsync on close), so a killed run leaves only whole lines; `repair_tail` drops a torn
last line before a resumed run appends. Readers name the file and line of any malformed row.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Optional, TypeVar

from charlab import failpoints
from charlab.data.records import from_dict, to_dict
from charlab.errors import DataError

R = TypeVar("R")


def iter_jsonl(path: str | Path) -> Iterator[dict[str, Any]]:
    """Objects of a JSONL file; blank lines skipped; a malformed or non-UTF-8 line is a one-line `DataError`."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise DataError(
                    f"{path}: line {lineno} is not UTF-8 text (byte {raw[err.start]:#04x} at column {err.start + 1}); "
                    "JSONL files must be UTF-8"
                ) from None
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}: line {lineno} is not valid JSON ({err.msg})") from None


def read_jsonl(path: str | Path, record_type: Optional[type[R]] = None, allow_empty: bool = False) -> list[Any]:
    """All rows of a JSONL file, as dicts or as `record_type` records."""
    path = Path(path)
    rows: list[Any] = []
    for i, data in enumerate(iter_jsonl(path), 1):
        rows.append(from_dict(record_type, data, where=f"{path}: row {i}") if record_type else data)
    if not rows and not allow_empty:
        raise DataError(f"{path}: file is empty")
    return rows


def repair_tail(path: str | Path) -> int:
    """Truncate a torn (unterminated) last line left by a crash; returns the bytes removed."""
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        return 0
    with path.open("rb+") as f:
        data = f.read()
        if data.endswith(b"\n"):
            return 0
        keep = data.rfind(b"\n") + 1
        f.truncate(keep)
        return len(data) - keep


def done_ids(path: str | Path, key: str = "id") -> set[str]:
    """Values of `key` already present in a JSONL file (empty if it does not exist)."""
    path = Path(path)
    if not path.is_file():
        return set()
    repair_tail(path)
    return {str(row[key]) for row in iter_jsonl(path) if key in row}


class JsonlWriter:
    """Appends records as whole lines; flushes every `flush_every` rows; use as a context manager."""

    def __init__(self, path: str | Path, flush_every: int = 1):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        repair_tail(self.path)
        self.flush_every = max(1, int(flush_every))
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._pending: list[bytes] = []
        self.written = 0

    def write(self, record: Any) -> None:
        """Queue one record (a dataclass record or a dict); written at the next flush."""
        data = record if isinstance(record, dict) else to_dict(record)
        self._pending.append((json.dumps(data, ensure_ascii=False) + "\n").encode("utf-8"))
        if len(self._pending) >= self.flush_every:
            self.flush()

    def write_many(self, records: Iterable[Any]) -> None:
        for record in records:
            self.write(record)

    def flush(self) -> None:
        """Write queued lines in one append (whole lines only)."""
        if self._pending:
            os.write(self._fd, b"".join(self._pending))
            self.written += len(self._pending)
            failpoints.reached("lines", self.path, len(self._pending))
            self._pending.clear()

    def close(self) -> None:
        self.flush()
        os.fsync(self._fd)
        os.close(self._fd)

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
