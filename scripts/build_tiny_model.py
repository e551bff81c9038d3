"""Build the tiny random Llama model (+ byte-level BPE tokenizer, ChatML template) into a folder.

    python scripts/build_tiny_model.py --out /tmp/tiny --seed 0

Deterministic: the same seed gives identical files. Runs need not call this: `model=tiny` builds it into the
cache on first use (`charlab.models.resolve_model_path`); this script is for inspecting it or building elsewhere.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="output folder (created; files overwritten)")
    parser.add_argument("--seed", type=int, default=0, help="weight-initialisation seed (default 0)")
    args = parser.parse_args(argv)

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
    from charlab.tiny_model import build_tiny_model

    start = time.perf_counter()
    out = build_tiny_model(args.out, seed=args.seed)
    print(f"tiny model (seed {args.seed}) written to {out.resolve()} in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
