"""Handing a trained adapter to a later pipeline step in the form that step's engine can use.

A trained adapter exists in several forms: the PEFT folder every training backend writes (`adapter`), and,
when it was trained on Tinker, the service's own weights (`adapter_tinker_sampler`, a `tinker://` sampler path;
`adapter_tinker_state`, a `tinker://` training-state path). Which form a later step needs depends on what
consumes it there, so a wiring entry names the consumer after `@`:

    introspect: {stage.adapter: dpo.adapter@student}       # sampled by the step's `student` provider
    sft:        {stage.dpo_adapter: dpo.adapter@backend}   # trained on by the step's training backend
    export:     {stage.sft_adapter: sft.adapter}           # no consumer: the PEFT folder as it is

The consumer's kind (`cfg.student.kind`, `cfg.backend.kind`, ... of the step's own composed config) picks a
handoff from `HANDOFFS`:

| consumer | kind | gets |
| --- | --- | --- |
| provider | `hf` | the PEFT folder (merged locally) |
| provider | `vllm` | the PEFT folder (its managed server loads it as a LoRA module) |
| provider | `tinker` | the `tinker://` sampler path (only an adapter trained on Tinker has one) |
| provider | `openai` | the name the adapter is served under (vLLM `--lora-modules <name>=<folder>`) |
| backend | `local` | the PEFT folder (merged into the base before the new LoRA trains) |
| backend | `tinker` | the `tinker://` training state, which the new run continues |

The user never translates between forms: a form the consumer cannot use (a locally trained adapter sampled on
Tinker) is a one-line error naming both steps and what to change.

To support a new provider or backend kind, write a function
`(produced: Produced, key: str, consumer: str) -> list[str]` that returns the step's overrides (usually
`[f"{key}={value}"]`), and register it: `HANDOFFS[("provider", "vllm")] = my_handoff`. A producing step that
has another form to offer publishes it as an artifact named `<artifact>_<form>` (as DPO and SFT publish
`TinkerBackend.remote_artifacts` through `charlab.stages._training.remote_forms`), and the handoff reads it
with `produced.form("<form>")`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Optional

from charlab.errors import ConfigError

PROVIDER_ROLES = ("teacher", "student", "judge")
CONSUMERS = (*PROVIDER_ROLES, "backend")


@dataclass(frozen=True)
class Source:
    """One wiring value: `<step>.<artifact>` or `<step>.<artifact>@<consumer>`."""

    step: str
    artifact: str
    consumer: Optional[str] = None

    @classmethod
    def parse(cls, text: str, where: str) -> Source:
        ref, _, consumer = str(text).partition("@")
        step, _, artifact = ref.partition(".")
        if not step or not artifact:
            raise ConfigError(f"{where}={text!r} is not allowed; use <step>.<artifact>[@<consumer>], e.g. dpo.adapter")
        if consumer and consumer not in CONSUMERS:
            raise ConfigError(f"{where}={text!r}: consumer '{consumer}' is unknown; allowed: {', '.join(CONSUMERS)}")
        return cls(step, artifact, consumer or None)


@dataclass(frozen=True)
class Produced:
    """An artifact of an earlier step, with every form that step published of it."""

    step: str
    artifact: str
    artifacts: dict[str, str] = field(default_factory=dict)  # all of the producing step's artifacts
    persona: str = ""

    @property
    def path(self) -> Optional[str]:
        return self.artifacts.get(self.artifact)

    def form(self, name: str) -> Optional[str]:
        """The artifact in another form (`adapter` -> `adapter_tinker_sampler`), if its step published it."""
        return self.artifacts.get(f"{self.artifact}_{name}")


Handoff = Callable[[Produced, str, str], list[str]]


def peft_folder(produced: Produced, key: str, consumer: str) -> list[str]:
    """The PEFT folder itself (`hf` sampling, `local` training)."""
    return [f"{key}={produced.path}"]


def tinker_form(form: str, what: str) -> Handoff:
    """A handoff giving the adapter's `tinker://` form `form` (`tinker_sampler` or `tinker_state`)."""

    def handoff(produced: Produced, key: str, consumer: str) -> list[str]:
        path = produced.form(form)
        if not path:
            raise ConfigError(
                f"{key} <- {produced.step}.{produced.artifact}: the {consumer} here is Tinker, which {what} only "
                f"tinker:// weights, but step '{produced.step}' has none (it did not train on backend=tinker); "
                f"train '{produced.step}' with backend=tinker, or use a local {consumer} (hf / backend=local)"
            )
        return [f"{key}={path}"]

    return handoff


def served_lora_name(produced: Produced, key: str, consumer: str) -> list[str]:
    """The name an OpenAI-compatible server (vLLM) serves the adapter under: `<persona>-<step>` by default."""
    name = produced.form("served_name") or f"{produced.persona}-{produced.step}".strip("-")
    return [f"{key}={name}"]


HANDOFFS: dict[tuple[str, str], Handoff] = {
    ("provider", "hf"): peft_folder,
    ("provider", "vllm"): peft_folder,
    ("provider", "tinker"): tinker_form("tinker_sampler", "samples from"),
    ("provider", "openai"): served_lora_name,
    ("backend", "local"): peft_folder,
    ("backend", "tinker"): tinker_form("tinker_state", "continues training from"),
}


def consumer_group(consumer: str) -> str:
    """`provider` for a sampling role, `backend` for the training backend."""
    return "backend" if consumer == "backend" else "provider"


def handoff_overrides(
    step: str,
    wiring: dict[str, str],
    artifacts: dict[str, dict[str, str]],
    kind_of: Callable[[str], str],
    persona: str = "",
) -> list[str]:
    """Overrides feeding `step` the artifacts of earlier steps, each in its consumer's form.

    `wiring` maps an override key of the step to a `Source` text; `artifacts[step]` are an earlier step's
    published artifacts; `kind_of(consumer)` is the kind of that consumer in the step's own config. Sources
    that earlier steps did not publish are skipped (that step did not run in this pipeline).
    """
    overrides: list[str] = []
    for key, text in (wiring or {}).items():
        source = Source.parse(text, f"pipeline.wiring.{step}.{key}")
        produced = Produced(source.step, source.artifact, dict(artifacts.get(source.step) or {}), persona)
        if produced.path is None:
            continue
        if source.consumer is None:
            overrides.append(f"{key}={produced.path}")
            continue
        kind = kind_of(source.consumer)
        handoff = HANDOFFS.get((consumer_group(source.consumer), kind))
        if handoff is None:
            known = sorted(k for g, k in HANDOFFS if g == consumer_group(source.consumer))
            raise ConfigError(
                f"pipeline step '{step}': {key} <- {text}: no handoff for {source.consumer} kind '{kind}'; "
                f"known kinds: {', '.join(known)} (see charlab/stages/handoff.py to add one)"
            )
        overrides += handoff(produced, key, source.consumer)
    return overrides
