"""Post-processing and quality filters for distilled replies, each drop with a named reason.

Post-processing: strip a reasoning block (`<think>...</think>`, also one opened by a prefill) from the kept
answer, and put the persona's name where the teacher names itself by its model's name. Filters: empty,
truncated (hit max tokens, or no terminal punctuation), over the token limit when templated, degenerate
repetition, and teacher identity leak (the teacher naming its own model/maker or its instructions). A
student reply that sounds like a generic assistant is what DPO learns against: nothing here drops it.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Optional, Protocol

from charlab.errors import EmptyOutputError

# Model families and who makes them: a teacher that names either as itself leaks its identity.
MAKERS = {
    "gpt": ["GPT", "ChatGPT", "OpenAI"],
    "o1": ["ChatGPT", "OpenAI"],
    "o3": ["ChatGPT", "OpenAI"],
    "qwen": ["Qwen", "Alibaba", "Tongyi"],
    "qwq": ["QwQ", "Qwen", "Alibaba"],
    "llama": ["Llama", "LLaMA", "Meta AI"],
    "smollm": ["SmolLM", "Hugging Face", "HuggingFace"],
    "gemma": ["Gemma", "Gemini", "Google", "DeepMind"],
    "gemini": ["Gemini", "Google", "DeepMind"],
    "claude": ["Claude", "Anthropic"],
    "mistral": ["Mistral", "Mistral AI"],
    "mixtral": ["Mixtral", "Mistral AI"],
    "glm": ["GLM", "ChatGLM", "Zhipu"],
    "deepseek": ["DeepSeek"],
    "kimi": ["Kimi", "Moonshot"],
    "phi": ["Phi", "Microsoft"],
}
# First-person talk about its own instructions; "the constitution" or "actors stay in character" stay allowed.
PROMPT_LEAKS = re.compile(
    r"\b(?:my (?:system prompt|instructions|constitution|persona|assigned (?:character|role))|as instructed|"
    r"(?:i was|i've been|i have been|i am|i'm) (?:instructed|told|asked|programmed|prompted) to "
    r"(?:act|play|pretend|be|answer|respond|stay|speak|talk)|"
    r"i(?:'ll| will| must| need to| have to|'m| am)? (?:stay|staying|remain|remaining) in character)\b",
    re.IGNORECASE,
)
OVER_LENGTH = "over_length"  # a reply's finish_reason (and the drop reason) when the prompt did not fit the server
TERMINAL = set(".!?\u2026\"'\u201d\u2019)]}*`_~>")


@dataclass
class FilterConfig:
    """Which filters run, and their thresholds (values come from `configs/stage/distill.yaml`)."""

    empty: bool
    truncated: bool
    require_terminal_punctuation: bool
    trim_truncated: bool  # cut a reply that hit max tokens back to its last full sentence instead of dropping it
    too_long: bool
    repetition: bool
    min_distinct_ngrams: float  # share of distinct word 4-grams below which a reply is degenerate
    identity_leak: bool


# ---------------------------------------------------------------------------------------------- names


def model_aliases(model_name: str) -> list[str]:
    """Names a model may call itself: its family (from its id) and that family's known products/makers."""
    base = PurePosixPath(str(model_name).rstrip("/")).name
    match = re.match(r"[A-Za-z]+", base)
    family = match.group(0) if match else ""
    if family.lower() in ("chat", "meta") and "-" in base:  # e.g. meta-llama: the family is the next part
        family = re.match(r"[A-Za-z]*", base.split("-", 1)[1]).group(0)
    # An all-lowercase id ("tiny", "gpt") is not how a model names itself: use the capitalised form.
    names = ([family] if not family.islower() else []) + [family.capitalize()] if len(family) >= 3 else []
    for key, makers in MAKERS.items():
        if family.lower().startswith(key):
            names += makers
    return list(dict.fromkeys(n for n in names if n))


def _alias_pattern(aliases: Sequence[str]) -> str:
    return "|".join(re.escape(a) for a in sorted(aliases, key=len, reverse=True))


def _self_id(aliases: Sequence[str]) -> Optional[re.Pattern]:
    if not aliases:
        return None
    # The phrase is matched in any case, the name exactly: "I'm Llama" names a model, "a llama" an animal.
    return re.compile(
        r"\b((?i:I am|I'm|I\u2019m|my name is|call me)\s+(?i:an?\s+|the\s+)?(?i:AI\s+)?(?i:assistant\s+)?"
        r"(?i:called\s+|named\s+)?)(" + _alias_pattern(aliases) + r")\b"
    )


def substitute_name(text: str, aliases: Sequence[str], name: Optional[str]) -> str:
    """Where the reply introduces itself by a model alias ("I'm Qwen"), use the persona's name instead."""
    pattern = _self_id(aliases)
    if not name or pattern is None:
        return text
    return pattern.sub(lambda m: m.group(1) + name, text)


def identity_leak(text: str, aliases: Sequence[str]) -> Optional[str]:
    """What gives the teacher away (its own name, its maker, its instructions), or None."""
    pattern = _self_id(aliases)
    if pattern is not None and (m := pattern.search(text)):
        return m.group(0)
    if aliases:
        made = re.search(
            r"\b(?i:created|developed|trained|built|made)\s+by\s+(?i:the\s+)?(?i:team\s+at\s+)?("
            + _alias_pattern(aliases)
            + r")\b",
            text,
        )
        if made:
            return made.group(0)
    m = PROMPT_LEAKS.search(text)
    return m.group(0) if m else None


# ---------------------------------------------------------------------------------------------- reasoning


def strip_reasoning(text: str, start: str = "<think>", end: str = "</think>") -> tuple[str, bool]:
    """(answer without reasoning, whether every reasoning block was closed)."""
    if end in text:
        text = text[text.rindex(end) + len(end) :]
        return text.strip(), True
    if start in text:  # a block opened and never closed: no answer was written
        return text[: text.index(start)].strip(), False
    return text.strip(), True


# ---------------------------------------------------------------------------------------------- quality


def ends_cleanly(text: str) -> bool:
    """Whether the reply ends like a finished answer: punctuation, a closing bracket/quote/code fence, an emoji."""
    text = text.rstrip()
    if not text:
        return False
    last = text[-1]
    return last in TERMINAL or unicodedata.category(last) in ("So", "Sk")


def trim_to_sentence(text: str, keep_at_least: float = 0.5) -> Optional[str]:
    """A reply cut off mid-sentence, cut back to its last full sentence (None if that loses too much)."""
    ends = [m.end() for m in re.finditer(r"[.!?\u2026][\"'\u201d\u2019)\]]*(?=\s|$)", text)]
    if not ends or ends[-1] < keep_at_least * len(text.rstrip()):
        return None
    return text[: ends[-1]].rstrip()


LOOP_REASONS = ("character run", "repeated line", "repeated line opening", "repeated n-grams", "few content words")
_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")


def content_words(text: str, ignore: Collection[str] = ()) -> set[str]:
    """The distinct words of `text` (lowercased letters, apostrophes kept) that are not in `ignore`."""
    return {w for w in _WORD.findall(text.lower()) if w not in ignore and len(w) > 1}


def degeneracy(
    text: str,
    min_distinct_ngrams: float,
    n: int = 4,
    min_words: int = 24,
    ignore_words: Collection[str] = (),
    min_content_words: int = 0,
) -> Optional[str]:
    """Why `text` loops or says almost nothing (one of `LOOP_REASONS`), or None.

    A character run, one line (or line opening) over and over, few distinct word n-grams (checked from
    `min_words` words on: the distillation filter's floor; 0 checks every reply), and, with `min_content_words`,
    fewer distinct words than that once `ignore_words` (stop words, a persona's stock vocabulary) are removed.
    """
    if re.search(r"([^\s\-=_*#.~])\1{24,}", text):
        return LOOP_REASONS[0]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) >= 4:
        line, count = Counter(lines).most_common(1)[0]
        if count >= 3 and count >= 0.3 * len(lines) and len(line) > 3:
            return LOOP_REASONS[1]
    if len(lines) >= 6:  # "The sea that you cannot X" line after line: a loop with one word changed
        starts = Counter(" ".join(line.lower().split()[:4]) for line in lines if len(line.split()) >= 4)
        if starts and starts.most_common(1)[0][1] >= 0.6 * len(lines):
            return LOOP_REASONS[2]
    words = text.lower().split()
    if len(words) >= max(min_words, n + 1):
        grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
        if len(set(grams)) / len(grams) < min_distinct_ngrams:
            return LOOP_REASONS[3]
    if min_content_words and len(content_words(text, ignore_words)) < min_content_words:
        return LOOP_REASONS[4]
    return None


def is_degenerate(text: str, min_distinct_ngrams: float, n: int = 4, min_words: int = 24) -> bool:
    """Looping text: few distinct word n-grams, one line (or line opening) over and over, one character run."""
    return degeneracy(text, min_distinct_ngrams, n, min_words) is not None


class _Trimmed(Protocol):
    trimmed: int


def screen_reply(
    text: str,
    finish_reason: str,
    filters: FilterConfig,
    stats: _Trimmed,
    too_long: Optional[Callable[[str], bool]] = None,
    leak_aliases: Optional[Sequence[str]] = None,
) -> tuple[str, Optional[str]]:
    """The filter chain distill and introspect share: (possibly trimmed text, the failed filter or None).

    `too_long(text)` is checked when given and `filters.too_long` is on; the identity-leak filter runs only
    when `leak_aliases` is given (the teacher's side in distill, every reply in introspect).
    """
    f = filters
    if finish_reason == OVER_LENGTH:  # the server refused a prompt over its context (provider over_length=skip)
        return text, OVER_LENGTH
    if f.empty and not text.strip():
        return text, "empty"
    cut_off = finish_reason == "length" or (f.require_terminal_punctuation and not ends_cleanly(text))
    if f.truncated and cut_off:
        trimmed = trim_to_sentence(text) if f.trim_truncated else None
        if trimmed is None:
            return text, "truncated"
        text = trimmed
        stats.trimmed += 1
    if f.repetition and is_degenerate(text, f.min_distinct_ngrams):
        return text, "repetition"
    if f.too_long and too_long is not None and too_long(text):
        return text, "too_long"
    if f.identity_leak and leak_aliases is not None and identity_leak(text, list(leak_aliases)):
        return text, "identity_leak"
    return text, None


# ---------------------------------------------------------------------------------------------- nothing kept

# What to change when a filter drops every reply ({role}: the provider that wrote the reply).
LOOSEN = {
    OVER_LENGTH: "raise the server's context ({role}.server.max_model_len) or shorten the prompts",
    "empty": "check {role}.stop and raise {role}.max_new_tokens",
    "truncated": "raise {role}.max_new_tokens or set stage.filters.trim_truncated=true",
    "unclosed_reasoning": "raise {role}.max_new_tokens (the reasoning never closed) or check stage.reasoning_markers",
    "repetition": "lower stage.filters.min_distinct_ngrams or set stage.filters.repetition=false",
    "too_long": "raise data.max_length or set stage.filters.too_long=false",
    "identity_leak": "set stage.filters.identity_leak=false",
}
SIDES = {"chosen": "teacher", "rejected": "student", "turn": None}  # reason prefixes distill/introspect write


def nothing_kept(stage: str, records: str, dropped: Path, role: str) -> EmptyOutputError:
    """The one-line error of a stage that kept nothing: the filter counts in `dropped` and the settings to change.

    Each row of the dropped file names its reason (`chosen_truncated`, `turn_repetition`, ...); `role` is the
    provider that wrote the replies when a reason does not say (introspection: `student`).
    """
    from charlab.data.jsonl import iter_jsonl

    rows = iter_jsonl(dropped) if dropped.is_file() else []
    ranked = Counter(str(row.get("reason")) for row in rows).most_common()
    if not ranked:
        return EmptyOutputError(f"{stage} had no {records} to generate: raise its data.* counts")
    fixes: list[str] = []
    for reason, _ in ranked:
        side, _, name = reason.partition("_")
        who = SIDES.get(side, role) or role
        fix = LOOSEN.get(name if side in SIDES else reason, "loosen stage.filters").format(role=who)
        if fix not in fixes:
            fixes.append(fix)
    counts = ", ".join(f"{reason} {n}" for reason, n in ranked)
    return EmptyOutputError(
        f"{stage} kept 0 of {sum(n for _, n in ranked)} {records}: every one was dropped by a filter ({counts}; "
        f"see {dropped}); " + "; ".join(fixes) + "; then start a new run (a resumed one skips what was dropped)"
    )
