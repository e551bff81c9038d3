"""Does a reply answer its own prompt? Statistics that a loop cannot raise and a persona's stock words cannot dilute.

* Prompt identification by a language model (`lm_identification`): the reply's log-likelihood after its own
  prompt vs after each of K other held-out prompts (no system prompt, `ChoiceScorer.score_choices`); a hit when
  its own prompt explains it best. The same reply is read in every row, so its length and its stock words
  cancel out: only what the prompt adds counts. A loop or a reply to another question is as likely after any
  prompt (chance: 1 / (K + 1)). The *mean per-token gain* from the own prompt is not used: stock words dilute it
  (a coherent pirate scored below the loops with it, see FIELD-NOTES).
* MiniLM (`embedding_relevance`): the cosine of the reply's and the prompt's sentence embeddings (all-MiniLM-L6-v2,
  offline), and identification by it among the same K + 1 prompts. The mean cosine falls for any persona (style
  moves the embedding); the identification does not.

The K other prompts of each prompt are drawn once (seeded by the prompt's id), so every player's reply to a prompt
faces the same ones and the players' rates pair by prompt.

    others = distractors([pid for pid, _ in prompts], k=5, seed=0)
    hits = lm_identification(judge_sampler, items, dict(prompts), others)   # {reply id: {"hit": 1.0, ...}}
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from charlab.chat_format import make_messages
from charlab.generation.base import ChoiceScorer


@dataclass(frozen=True)
class ReplyItem:
    """One reply to score: its id (`<player>:<prompt id>`), the prompt it answers and its text."""

    id: str
    prompt_id: str
    text: str


def distractors(prompt_ids: Sequence[str], k: int, seed: int = 0) -> dict[str, list[str]]:
    """For each prompt id, `k` other ids (all others when fewer): one seeded draw per id, whatever the order."""
    ids = sorted(set(prompt_ids))
    out = {}
    for pid in ids:
        others = [o for o in ids if o != pid]
        out[pid] = random.Random(f"{seed}:{pid}").sample(others, min(k, len(others)))
    return out


def _hit(own: float, others: Sequence[float]) -> float:
    return float(all(own > other for other in others))


def lm_identification(
    scorer: ChoiceScorer,
    items: Sequence[ReplyItem],
    prompts: Mapping[str, str],
    others: Mapping[str, Sequence[str]],
    batch_size: int = 8,
) -> dict[str, dict[str, Any]]:
    """Per reply id: `hit` (1.0 when its own prompt gives it the highest log-likelihood of the K + 1), `own`
    (that log-likelihood, summed over the reply's tokens) and `others`. Empty replies are not scored."""
    todo = [item for item in items if item.text.strip()]
    out: dict[str, dict[str, Any]] = {}
    for start in range(0, len(todo), max(1, batch_size)):
        chunk = todo[start : start + max(1, batch_size)]
        conversations, choices = [], []
        for item in chunk:
            for pid in [item.prompt_id, *others[item.prompt_id]]:
                conversations.append(make_messages(prompts[pid]))
                choices.append([item.text])
        scores = [s[0] for s in scorer.score_choices(conversations, choices)]
        at = 0
        for item in chunk:
            width = 1 + len(others[item.prompt_id])
            own, rest = scores[at], scores[at + 1 : at + width]
            out[item.id] = {"hit": _hit(own, rest), "own": own, "others": rest}
            at += width
    return out


def embedding_relevance(
    encoder: Any,
    tokenizer: Any,
    items: Sequence[ReplyItem],
    prompts: Mapping[str, str],
    others: Mapping[str, Sequence[str]],
    max_length: int = 256,
) -> dict[str, dict[str, float]]:
    """Per reply id: `cosine` with its own prompt's MiniLM embedding and `hit` (1.0 when its own prompt is the
    nearest of the K + 1). Empty replies are not scored."""
    from charlab.eval.embedding_head import embed

    todo = [item for item in items if item.text.strip()]
    if not todo:
        return {}
    prompt_ids = list(prompts)
    prompt_vectors = embed(encoder, tokenizer, [prompts[pid] for pid in prompt_ids], max_length)
    reply_vectors = embed(encoder, tokenizer, [item.text for item in todo], max_length)
    cosines = (reply_vectors @ prompt_vectors.T).numpy()  # both L2-normalised
    column = {pid: j for j, pid in enumerate(prompt_ids)}
    out = {}
    for row, item in enumerate(todo):
        own = float(cosines[row, column[item.prompt_id]])
        rest = [float(cosines[row, column[pid]]) for pid in others[item.prompt_id]]
        out[item.id] = {"cosine": own, "hit": _hit(own, rest)}
    return out
