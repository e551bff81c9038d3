"""Log-probabilities of fixed answer choices as the continuation of a prompt, with a local causal LM.

A judge that must pick one of a few answers ("A" / "B" / "tie", or two trait names) need not generate text
that then has to be parsed: the model's own probability of each answer's tokens, right after the prompt,
is its verdict, and it always exists. `choice_logprobs` computes, for each prompt, the summed log-probability
of every choice's tokens. One forward pass per prompt gives the first token of every one-token choice; a choice
longer than one token gets a pass of its own (prompt + choice) that scores all its tokens, so a prompt with only
long choices (a whole reply, as the persona contrast scores) is never read alone. Rows are left-padded so that
they all end at the same position and only the last few positions go through the output layer (a 49k vocabulary
makes the full logits of a long prompt the most expensive part of the pass).

    scores = choice_logprobs(model, pad_id, [prompt_ids], [[[id_A], [id_B], [id_t, id_ie]]])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

# float32 logits kept per forward pass (a 49k vocabulary is 200 KB per kept position)
LOGIT_BYTES = 1 << 27
# tokens per forward pass (activations of long prompts)
TOKENS_PER_PASS = 8192


def _tail_logprobs(model: Any, pad_id: int, rows: Sequence[list[int]], keep: Sequence[int]) -> list[Any]:
    """log-softmax over the vocabulary at the last `keep[i]` positions of each row (left-padded batches)."""
    import torch

    device = next(model.parameters()).device
    vocab = int(model.get_output_embeddings().weight.shape[0])
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i]))
    out: list[Any] = [None] * len(rows)
    start = 0
    while start < len(order):
        width = len(rows[order[start]])
        tail = max(keep[i] for i in order[start : start + 64])
        size = max(1, min(TOKENS_PER_PASS // width, LOGIT_BYTES // (4 * vocab * tail), 64))
        chunk = order[start : start + size]
        start += len(chunk)
        tail = max(keep[i] for i in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for r, i in enumerate(chunk):
            ids[r, width - len(rows[i]) :] = torch.tensor(rows[i], dtype=torch.long)
            mask[r, width - len(rows[i]) :] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        inputs = {"input_ids": ids.to(device), "attention_mask": mask.to(device), "position_ids": positions.to(device)}
        try:
            logits = model(**inputs, use_cache=False, logits_to_keep=tail).logits
        except TypeError:  # a model class without `logits_to_keep`: keep the tail ourselves
            logits = model(**inputs, use_cache=False).logits
        logprobs = torch.log_softmax(logits[:, -tail:].float(), dim=-1)
        for r, i in enumerate(chunk):
            out[i] = logprobs[r, tail - keep[i] :].cpu()
    return out


def choice_logprobs(
    model: Any,
    pad_id: int,
    prompts: Sequence[list[int]],
    choices: Sequence[Sequence[list[int]]],
    per_token: bool = False,
) -> list[list[float]]:
    """For each prompt, the log-probability of each of its choices' token sequences as the continuation
    (`per_token`: divided by the choice's number of tokens)."""
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
            # the prompt alone only where a choice is one token: a longer choice's own pass scores its first token
            short = [i for i, options in enumerate(choices) if any(len(tokens) == 1 for tokens in options)]
            tails = _tail_logprobs(model, pad_id, [prompts[i] for i in short], [1] * len(short)) if short else []
            last = {i: lp[-1] for i, lp in zip(short, tails)}
            result = [
                [float(last[i][tokens[0]]) if len(tokens) == 1 else 0.0 for tokens in options]
                for i, options in enumerate(choices)
            ]
            longer = [
                (i, j) for i, options in enumerate(choices) for j, tokens in enumerate(options) if len(tokens) > 1
            ]
            if longer:
                rows = [list(prompts[i]) + list(choices[i][j]) for i, j in longer]
                keep = [len(choices[i][j]) + 1 for i, j in longer]  # index k predicts the choice's token k
                for (i, j), logprobs in zip(longer, _tail_logprobs(model, pad_id, rows, keep)):
                    tokens = choices[i][j]
                    result[i][j] = float(sum(logprobs[k, t] for k, t in enumerate(tokens)))
    finally:
        if was_training:
            model.train()
    if per_token:
        return [[v / len(t) for v, t in zip(values, options)] for values, options in zip(result, choices)]
    return result
