"""Value checks for every config group, run at the start of every stage (`stage=show` included).

Hydra's schemas catch a wrong type or a misspelt key; these catch a well-typed value that cannot work
(`lora.rank=0`, `teacher.top_p=2`, `backend.nproc_per_node=0`) with one line that names the key and what is
allowed, before a model is loaded or a run directory is filled. A rule names a dotted key; a key the composed
config does not have (a provider without `max_concurrency`, a stage without `batch_size`) is skipped, and an
interpolation is checked once resolved.

    check_config(resolved)   # raises ConfigError on the first value that is not allowed
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from charlab.errors import ConfigError

ROLES = ("teacher", "student", "judge")
_MISSING = object()


@dataclass(frozen=True)
class Rule:
    """A dotted config key, a test its value must pass, and what is allowed (for the error line)."""

    key: str
    ok: Callable[[Any], bool]
    allowed: str


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def at_least(low: float, integer: bool = False) -> Callable[[Any], bool]:
    """Values >= `low` (an int when `integer`)."""
    return lambda v: _number(v) and (not integer or float(v).is_integer()) and v >= low


def in_range(low: float, high: float, closed_high: bool = True, closed_low: bool = True) -> Callable[[Any], bool]:
    """Values between `low` and `high`, each end closed or open."""

    def ok(v: Any) -> bool:
        if not _number(v):
            return False
        above = v >= low if closed_low else v > low
        below = v <= high if closed_high else v < high
        return above and below

    return ok


def one_of(*choices: str) -> Callable[[Any], bool]:
    """One of the given strings."""
    return lambda v: v in choices


def optional(test: Callable[[Any], bool]) -> Callable[[Any], bool]:
    """`test`, or null."""
    return lambda v: v is None or test(v)


def _device(value: Any) -> bool:
    text = str(value)
    return text in ("auto", "cpu", "cuda", "mps") or (text.startswith("cuda:") and text[5:].isdigit())


POSITIVE_INT, NON_NEGATIVE_INT = at_least(1, integer=True), at_least(0, integer=True)
DTYPES = ("auto", "float32", "bfloat16", "float16")
RULES: tuple[Rule, ...] = (
    Rule("lora.rank", POSITIVE_INT, "a positive integer (e.g. 32)"),
    Rule("lora.alpha", in_range(0, float("inf"), closed_low=False), "a positive number (e.g. 2 x rank)"),
    Rule("lora.dropout", in_range(0.0, 1.0, closed_high=False), "a value in [0, 1)"),
    Rule("lora.target_modules", lambda v: isinstance(v, list) and len(v) > 0, "a non-empty list of layer names"),
    Rule("model.dtype", one_of(*DTYPES), " | ".join(DTYPES)),
    Rule("backend.device", _device, "auto | cpu | cuda | cuda:N | mps"),
    Rule("backend.dtype", one_of("auto", "float32", "bfloat16"), "auto | float32 | bfloat16"),
    Rule("backend.nproc_per_node", POSITIVE_INT, "an integer >= 1"),
    Rule("backend.distributed_timeout_s", in_range(0, float("inf"), closed_low=False), "a positive number"),
    Rule("backend.num_threads", optional(POSITIVE_INT), "null or an integer >= 1"),
    Rule("backend.save_every", POSITIVE_INT, "an integer >= 1"),
    Rule("backend.max_concurrency", POSITIVE_INT, "an integer >= 1"),
    *(
        rule
        for role in ROLES
        for rule in (
            Rule(f"{role}.temperature", at_least(0.0), "a number >= 0 (0: greedy)"),
            Rule(f"{role}.top_p", in_range(0.0, 1.0, closed_low=False), "a number in (0, 1]"),
            Rule(f"{role}.max_new_tokens", POSITIVE_INT, "an integer >= 1"),
            Rule(f"{role}.batch_size", POSITIVE_INT, "an integer >= 1"),
            Rule(f"{role}.max_concurrency", POSITIVE_INT, "an integer >= 1"),
            Rule(f"{role}.timeout_s", in_range(0, float("inf"), closed_low=False), "a positive number of seconds"),
            Rule(f"{role}.max_retries", NON_NEGATIVE_INT, "an integer >= 0"),
        )
    ),
    *(
        Rule(f"data.{key}", NON_NEGATIVE_INT, "an integer >= 0")
        for key in ("generic_prompts", "questions_per_trait", "reflections", "interactions")
    ),
    Rule("data.persona_prompts", optional(NON_NEGATIVE_INT), "null (questions_per_trait x traits) or an integer >= 0"),
    Rule("data.samples_per_prompt", POSITIVE_INT, "an integer >= 1"),
    Rule("data.interaction_turns", POSITIVE_INT, "an integer >= 1"),
    *(Rule(f"data.{key}", POSITIVE_INT, "an integer >= 1") for key in ("max_length", "sft_max_length")),
    Rule("data.context_length", POSITIVE_INT, "an integer >= 1"),
    Rule("data.dedupe_threshold", in_range(0.0, 1.0), "a number in [0, 1] (1: exact duplicates only)"),
    Rule("data.hint_rate", in_range(0.0, 1.0), "a number in [0, 1]"),
    Rule("data.eval_fraction", in_range(0.0, 1.0, closed_high=False), "a number in [0, 1)"),
    *(
        Rule(f"eval.{key}", POSITIVE_INT, "an integer >= 1")
        for key in ("batch_size", "num_prompts", "revealed_trials", "orderings", "classifier_epochs",
                    "classifier_batch_size", "classifier_max_length")
    ),  # fmt: skip
    Rule("eval.robustness_prompts", NON_NEGATIVE_INT, "an integer >= 0"),
    Rule("eval.bootstrap", NON_NEGATIVE_INT, "an integer >= 0 (0: no confidence intervals)"),
    Rule("eval.ci_level", in_range(0.0, 1.0, closed_low=False, closed_high=False), "a number in (0, 1), e.g. 0.95"),
    Rule("eval.k_factor", in_range(0, float("inf"), closed_low=False), "a positive number"),
    Rule("eval.min_usable", NON_NEGATIVE_INT, "an integer >= 0"),
)


def lookup(config: Mapping[str, Any], key: str) -> Any:
    """The value at dotted `key`, or a sentinel when the config has no such key."""
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return _MISSING
        node = node[part]
    return node


def check_lora(lora: Any) -> None:
    """The `lora.*` rules on a `LoraConfig` (the library's own entry to training, without the CLI's checks)."""
    fields = ("rank", "alpha", "dropout", "target_modules")
    check_config({"lora": {f: getattr(lora, f) for f in fields}}, tuple(r for r in RULES if r.key.startswith("lora.")))


def check_config(config: Mapping[str, Any], rules: tuple[Rule, ...] = RULES) -> None:
    """Raise a one-line `ConfigError` for the first value (resolved, plain data) that a rule does not allow."""
    for rule in rules:
        value = lookup(config, rule.key)
        if value is _MISSING:
            continue
        if not rule.ok(value):
            shown = "null" if value is None else value
            raise ConfigError(f"{rule.key}={shown} is not allowed; use {rule.allowed}")
