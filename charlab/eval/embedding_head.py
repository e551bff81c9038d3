"""The persona classifier's `embedding` method: frozen sentence embeddings and a logistic-regression head.

Fine-tuning an encoder needs thousands of labelled replies (the paper's setup); an evaluation on a CPU with a
few dozen replies per class cannot supply them, and a fine-tuned encoder then stays near chance. A frozen
sentence encoder (all-MiniLM-L6-v2 is trained for sentence similarity) already places replies written in a
voice near each other, so a regularised multinomial logistic regression on its mean-pooled, normalised
embeddings learns the persona from little data, deterministically, in seconds.

    features = embed(encoder, tokenizer, texts, max_length=256)
    head = fit_logistic(features, labels, num_classes=2, c=1.0)
    probabilities = head.probabilities(features)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


def embed(model: Any, tokenizer: Any, texts: Sequence[str], max_length: int = 256, batch_size: int = 32) -> Any:
    """Mean-pooled, L2-normalised last hidden states of `texts` (a float32 tensor: texts x hidden)."""
    import torch

    device = next(model.parameters()).device
    out = []
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            enc = tokenizer(
                list(texts[start : start + batch_size]),
                padding=True,
                truncation=True,
                max_length=max_length,
                return_tensors="pt",
            ).to(device)
            hidden = model(**enc).last_hidden_state.float()
            mask = enc["attention_mask"].unsqueeze(-1).float()
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
            out.append(torch.nn.functional.normalize(pooled, dim=-1).cpu())
    hidden_size = int(getattr(model.config, "hidden_size", 0))
    return torch.cat(out) if out else torch.zeros((0, hidden_size))


@dataclass
class LogisticHead:
    """A multinomial logistic regression over centred features: `weight` (features x classes), `bias`, `mean`."""

    weight: Any
    bias: Any
    mean: Any

    def probabilities(self, features: Any) -> Any:
        import torch

        return torch.softmax((features - self.mean) @ self.weight + self.bias, dim=-1)

    def state_dict(self) -> dict[str, Any]:
        return {"weight": self.weight.contiguous(), "bias": self.bias.contiguous(), "mean": self.mean.contiguous()}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> LogisticHead:
        return cls(state["weight"], state["bias"], state["mean"])


def fit_logistic(
    features: Any, labels: Sequence[int], num_classes: int, c: float = 1.0, max_iter: int = 500
) -> LogisticHead:
    """Minimise the summed cross-entropy + ||W||^2 / (2c) (scikit-learn's convention) with L-BFGS."""
    import torch

    x = features.double()
    mean = x.mean(dim=0)
    x = x - mean
    y = torch.as_tensor(list(labels), dtype=torch.long)
    weight = torch.zeros((x.shape[1], num_classes), dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [weight, bias], lr=1.0, max_iter=max_iter, tolerance_grad=1e-9, tolerance_change=1e-12,
        line_search_fn="strong_wolfe",
    )  # fmt: skip

    def closure() -> Any:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(x @ weight + bias, y, reduction="sum")
        loss = loss + (weight * weight).sum() / (2.0 * c)
        loss.backward()
        return loss

    optimizer.step(closure)
    return LogisticHead(weight.detach().float(), bias.detach().float(), mean.float())
