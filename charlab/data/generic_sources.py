"""Generic (persona-free) user prompts from where `data.generic_source` points, with `data.generic_field`.

- `bundled`: charlab's hand-written offline set (`charlab/assets/generic_prompts.txt`);
- a local file: `.txt` (one prompt per line), `.jsonl`, `.json` or `.parquet` (`generic_field` names the column);
- a Hugging Face dataset id, optionally with a split (`GAIR/lima`, `GAIR/lima:train+test`), loaded with
  `datasets` (its cache works offline). A gated or unreachable dataset is one line saying what to do.

A field holding a conversation (LIMA's `conversations`: a list of turns, or of `{"role", "content"}`) gives its
first turn, the user's prompt, as the paper does. Exact duplicates are dropped, order kept.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from charlab.data.prompt_text import unique
from charlab.errors import DataError
from charlab.settings import assets_dir

FILE_SUFFIXES = (".txt", ".json", ".jsonl", ".parquet")


def load_generic(source: str, field_name: str = "prompt") -> list[str]:
    """The distinct generic prompts of `source` (see the module docstring)."""
    if source == "bundled":
        return unique((assets_dir() / "generic_prompts.txt").read_text(encoding="utf-8").splitlines())
    path = Path(source).expanduser()
    if path.is_file():
        return unique([field_text(row, field_name, str(path)) for row in read_rows(path)])
    if path.suffix in FILE_SUFFIXES or source.startswith(("/", ".", "~")):
        raise DataError(f"data.generic_source '{source}': file not found")
    return unique([field_text(row, field_name, f"dataset {source}") for row in load_hub_dataset(source)])


def read_rows(path: Path) -> list[Any]:
    """The rows of a local source file (strings for .txt, dicts otherwise)."""
    where = f"data.generic_source '{path}'"
    if path.suffix == ".txt":
        return path.read_text(encoding="utf-8").splitlines()
    if path.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq

            return pq.read_table(path).to_pylist()
        except Exception as err:  # pyarrow raises its own types; the user needs one line
            raise DataError(f"{where}: not a readable Parquet file ({type(err).__name__})") from None
    if path.suffix == ".json":
        try:
            rows = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise DataError(f"{where}: invalid JSON ({type(err).__name__})") from None
        return rows if isinstance(rows, list) else [rows]
    from charlab.data.jsonl import read_jsonl

    return read_jsonl(path)


def field_text(row: Any, field_name: str, where: str) -> str:
    """The prompt in one row: its `field_name` value, or a conversation's first turn."""
    if isinstance(row, str):
        return row
    if not isinstance(row, dict) or field_name not in row:
        raise DataError(f"{where}: a row has no field '{field_name}'; set data.generic_field")
    value = row[field_name]
    if isinstance(value, list):  # conversations (e.g. LIMA): the first turn is the user's prompt
        value = value[0] if value else ""
        value = value.get("content", "") if isinstance(value, dict) else value
    return str(value)


def load_hub_dataset(source: str) -> list[Any]:
    """Rows of a Hugging Face dataset `name[:split]` (default split: train); one-line errors."""
    name, _, split = source.partition(":")
    try:
        import datasets

        return list(datasets.load_dataset(name, split=split or "train"))
    except Exception as err:  # datasets raises many types; the user needs one line
        raise DataError(hub_error(source, name, err)) from None


def hub_error(source: str, name: str, err: Exception) -> str:
    """What went wrong loading a hub dataset, and what to do about it."""
    detail = " ".join(str(err).split())
    instead = (
        f"or download it (`huggingface-cli download {name} --repo-type dataset`) and set "
        f"data.generic_source=<its .jsonl/.parquet file> data.generic_field=<the prompt field>, "
        "or use data.generic_source=bundled"
    )
    if "gated" in detail.lower():
        return (
            f"data.generic_source '{source}' is a gated dataset: accept its terms at "
            f"https://huggingface.co/datasets/{name} and log in (`huggingface-cli login` or HF_TOKEN), {instead}"
        )
    if isinstance(err, ConnectionError) or "offline" in detail.lower() or "couldn't reach" in detail.lower():
        return f"data.generic_source '{source}': the Hugging Face hub is unreachable from here (offline); {instead}"
    return (
        f"data.generic_source '{source}' is not a file and could not be loaded as a Hugging Face dataset "
        f"({type(err).__name__}: {detail[:160]}); use 'bundled', a .jsonl/.parquet file, or '<dataset id>:<split>'"
    )
