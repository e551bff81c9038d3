"""Secret redaction rules and crash-safe JSONL I/O."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from charlab.data.jsonl import JsonlWriter, done_ids, read_jsonl, repair_tail
from charlab.data.records import DpoExample
from charlab.errors import DataError
from charlab.redact import REDACTED, env_secrets, redact, redact_file, secrets_in

pytestmark = pytest.mark.unit


def test_redact_by_key_name_and_by_secret_value() -> None:
    config = {
        "teacher": {"api_key": "sk-abcdefgh12345", "api_key_env": "OPENAI_API_KEY", "max_new_tokens": 256},
        "hf_token": "hf_abcdefghijkl",
        "note": "the key sk-zzzzzzzz99999 leaked here",
        "tokens": [1, 2],
    }
    secrets = secrets_in(config) | env_secrets(
        {"OPENAI_API_KEY": "sk-zzzzzzzz99999", "TOKENIZERS_PARALLELISM": "false"}
    )
    out = redact(config, secrets)
    assert out["teacher"]["api_key"] == REDACTED and out["hf_token"] == REDACTED
    assert out["teacher"]["max_new_tokens"] == 256 and out["tokens"] == [1, 2]
    assert out["note"] == f"the key {REDACTED} leaked here"
    assert "false" not in secrets  # short, non-secret values are left alone


def test_redact_file_handles_override_lists(tmp_path: Path) -> None:
    path = tmp_path / "overrides.yaml"
    path.write_text("- +teacher.api_key=sk-live-123456789\n- teacher.max_new_tokens=64\n- x=envsecret-abcdefgh\n")
    redact_file(path, {"envsecret-abcdefgh"})
    text = path.read_text()
    assert "sk-live" not in text and "envsecret" not in text and "teacher.max_new_tokens=64" in text


def test_writer_appends_whole_lines_and_resume_sees_done_ids(tmp_path: Path) -> None:
    path = tmp_path / "pairs.jsonl"
    with JsonlWriter(path, flush_every=2) as writer:
        for i in range(5):
            writer.write(DpoExample(prompt=f"p{i}", chosen="c", rejected="r", id=f"p{i}:0"))
    assert done_ids(path) == {f"p{i}:0" for i in range(5)}
    rows = read_jsonl(path, DpoExample)
    assert [r.prompt for r in rows] == [f"p{i}" for i in range(5)]


def test_a_torn_last_line_is_repaired_before_appending(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_text(json.dumps({"id": "a"}) + "\n" + '{"id": "b", "tex')
    assert repair_tail(path) > 0
    with JsonlWriter(path) as writer:
        writer.write({"id": "c"})
    assert [r["id"] for r in read_jsonl(path)] == ["a", "c"]


def test_bad_data_files_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="file not found"):
        read_jsonl(tmp_path / "missing.jsonl")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(DataError, match="file is empty"):
        read_jsonl(empty)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x"}\nnot json\n')
    with pytest.raises(DataError, match="line 2 is not valid JSON"):
        read_jsonl(bad)
    missing = tmp_path / "missing_field.jsonl"
    missing.write_text('{"prompt": "x", "rejected": "r"}\n')
    with pytest.raises(DataError, match="missing field 'chosen'"):
        read_jsonl(missing, DpoExample)


def test_a_file_that_is_not_utf8_is_a_one_line_error_naming_file_and_line(tmp_path: Path) -> None:
    """Injected bug: `iter_jsonl` decoding the whole file as text -> a `UnicodeDecodeError` traceback."""
    binary = tmp_path / "pairs.jsonl"
    binary.write_bytes(b'{"prompt": "fine"}\n\x89PNG\r\n\x1a\n\x00\xff\xfe binary\n')
    with pytest.raises(DataError) as err:
        read_jsonl(binary)
    message = str(err.value)
    assert message.startswith(f"{binary}: line 2 is not UTF-8 text (byte 0x89 at column 1)") and "\n" not in message
    latin1 = tmp_path / "latin1.jsonl"
    latin1.write_bytes('{"prompt": "caf\u00e9"}\n'.encode("latin-1"))
    with pytest.raises(DataError, match=r"line 1 is not UTF-8 text \(byte 0xe9 at column 16\)"):
        done_ids(latin1)
    utf8 = tmp_path / "utf8.jsonl"
    utf8.write_text('{"prompt": "caf\u00e9 \u2603"}\n', encoding="utf-8")
    assert read_jsonl(utf8) == [{"prompt": "caf\u00e9 \u2603"}]
