"""Secret redaction for everything written to a run directory.

Two rules: a string value under a key that names a secret (`*api_key*`, `*secret*`, `*password*`,
`*token` as a whole word such as `hf_token`) is replaced, and any occurrence of the value of a secret
environment variable (`OPENAI_API_KEY`, `TINKER_API_KEY`, `HF_TOKEN`, ...) is replaced wherever it appears.
Numbers are never secrets, so `max_new_tokens: 256` stays readable.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

REDACTED = "***REDACTED***"
SECRET_KEY_RE = re.compile(r"(api[_-]?key|secret|password|passwd|credential|(^|[_-])(access_|auth_)?token$)", re.I)
SECRET_ENV_RE = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL)", re.I)
MIN_SECRET_LENGTH = 8


def is_secret_key(key: str) -> bool:
    """True if a config key's name says its value is a secret."""
    return bool(SECRET_KEY_RE.search(str(key)))


def env_secrets(environ: Mapping[str, str] | None = None) -> set[str]:
    """Values of environment variables whose names say they hold secrets (long enough to be one)."""
    environ = os.environ if environ is None else environ
    return {v for k, v in environ.items() if SECRET_ENV_RE.search(k) and len(v or "") >= MIN_SECRET_LENGTH}


def secrets_in(obj: Any) -> set[str]:
    """String values found under secret-named keys anywhere in a nested dict/list."""
    found: set[str] = set()
    if isinstance(obj, Mapping):
        for key, value in obj.items():
            if isinstance(value, str) and is_secret_key(key) and len(value) >= MIN_SECRET_LENGTH:
                found.add(value)
            else:
                found |= secrets_in(value)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            found |= secrets_in(value)
    return found


def redact_text(text: str, secrets: Iterable[str]) -> str:
    """`text` with every secret value replaced (longest first, so overlapping secrets vanish whole)."""
    for secret in sorted(set(secrets), key=len, reverse=True):
        if secret:
            text = text.replace(secret, REDACTED)
    return text


def redact(obj: Any, secrets: Iterable[str] = ()) -> Any:
    """A redacted copy of a nested dict/list: secret-named keys and secret values inside strings."""
    secrets = set(secrets)
    if isinstance(obj, Mapping):
        return {
            k: (REDACTED if isinstance(v, str) and v and is_secret_key(k) else redact(v, secrets))
            for k, v in obj.items()
        }
    if isinstance(obj, (list, tuple)):
        return [redact(v, secrets) for v in obj]
    if isinstance(obj, str):
        return redact_text(obj, secrets)
    return obj


_OVERRIDE_SECRET_RE = re.compile(
    r"(?P<key>[\w.@/+~-]*?(api[_-]?key|secret|password|token)[\w-]*)=(?P<value>[^\s'\"\]]+)", re.I
)


def redact_file(path: Path, secrets: Iterable[str]) -> None:
    """Rewrite a text file in place with secrets (and `key=value` overrides of secret keys) redacted."""
    text = path.read_text(encoding="utf-8", errors="replace")
    new = redact_text(text, secrets)
    new = _OVERRIDE_SECRET_RE.sub(
        lambda m: m.group(0) if m.group("value").isdigit() else f"{m.group('key')}={REDACTED}", new
    )
    if new != text:
        path.write_text(new, encoding="utf-8")
