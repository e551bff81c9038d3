"""User-facing errors: one line that names the file, field or option and what is allowed.

`charlab.train` prints a `CharlabError` as `charlab: error: <message>` and exits non-zero, with no stack
trace; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class CharlabError(Exception):
    """A problem with the user's input or environment, explained in one line."""


class ConfigError(CharlabError):
    """An invalid option value (e.g. `lora.rank=0`)."""


class ConstitutionError(CharlabError):
    """A constitution file that is missing, unreadable or invalid."""


class DataError(CharlabError):
    """A data file (pairs.jsonl, introspection.jsonl, ...) that is missing, empty or malformed."""


class ModelNotFoundError(CharlabError):
    """A model name or path that cannot be loaded here."""


class ProviderError(CharlabError):
    """A generation provider that is misconfigured (missing key, unreachable server, unknown model)."""


class EmptyOutputError(CharlabError):
    """A generation stage whose every record was dropped by its filters (or that had nothing to generate)."""
