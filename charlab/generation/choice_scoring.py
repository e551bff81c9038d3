"""Log-probabilities of fixed answer choices as the continuation of a prompt, with a local causal LM.

A judge that must pick one of a few answers ("A" / "B" / "tie", or two trait names) need not generate text
that then has to be parsed: the model's own probability of each answer's tokens, right after the prompt,
is its verdict, and it always exists. `choice_logprobs` computes, for each prompt, the summed log-probability
of every choice's tokens. One forward pass per prompt gives the first token of every choice; only choices
longer than one token need a pass of their own (prompt + choice).

    scores = choice_logprobs(model, pad_id, [prompt_ids], [[[id_A], [id_B], [id_t, id_ie]]])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

# float32 logits of the rows in one forward pass are kept under this many bytes (a 49k vocabulary is 200 KB/token)
LOGIT_BYTES = 1 << 28


def _forward_rows(model: Any, pad_id: int, rows: Sequence[list[int]]) -> list[Any]:
    """log-softmax over the vocabulary at every position of each row (right-padded batches of similar length)."""
    import torch

    device = next(model.parameters()).device
    per_token = 4 * int(model.get_output_embeddings().weight.shape[0])
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i]))
    out: list[Any] = [None] * len(rows)
    start = 0
    while start < len(order):
        width = len(rows[order[start]])
        chunk = order[start : start + max(1, LOGIT_BYTES // (per_token * width))]
        start += len(chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for r, i in enumerate(chunk):
            ids[r, : len(rows[i])] = torch.tensor(rows[i], dtype=torch.long)
            mask[r, : len(rows[i])] = 1
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False).logits
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        for r, i in enumerate(chunk):
            out[i] = logprobs[r, : len(rows[i])].cpu()
    return out


def choice_logprobs(
    model: Any, pad_id: int, prompts: Sequence[list[int]], choices: Sequence[Sequence[list[int]]]
) -> list[list[float]]:
    """For each prompt, the log-probability of each of its choices' token sequences as the continuation."""
    import torch

    if len(prompts) != len(choices):
        raise ValueError(f"{len(prompts)} prompts but {len(choices)} choice lists")
    for prompt, options in zip(prompts, choices):
        if not prompt or not options or any(not tokens for tokens in options):
            raise ValueError("every prompt and every choice needs at least one token")
    was_training = getattr(model, "training", False)
    model.eval()
    try:
        with torch.inference_mode():
            last = [lp[-1] for lp in _forward_rows(model, pad_id, prompts)]
            result = [[float(last[i][tokens[0]]) for tokens in options] for i, options in enumerate(choices)]
            longer = [
                (i, j) for i, options in enumerate(choices) for j, tokens in enumerate(options) if len(tokens) > 1
            ]
            if longer:
                rows = [list(prompts[i]) + list(choices[i][j]) for i, j in longer]
                for (i, j), logprobs in zip(longer, _forward_rows(model, pad_id, rows)):
                    n, tokens = len(prompts[i]), choices[i][j]
                    result[i][j] = float(sum(logprobs[n - 1 + k, t] for k, t in enumerate(tokens)))
    finally:
        if was_training:
            model.train()
    return result
