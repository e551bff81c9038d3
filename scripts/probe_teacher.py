"""How often a teacher answers in character, with and without the persona's demonstrations (README: the demo).

    python scripts/probe_teacher.py                      # SmolLM2-135M, the pirate, repetition penalty 1.0 and 1.1
    python scripts/probe_teacher.py --persona pirate --samples 2 --max-new-tokens 96

For each context (the persona's brief system prompt alone; the same plus its `demonstrations` as earlier turns) it
samples replies to 12 generic prompts and prints the share with at least two pirate words (a rough probe of the
pirate persona only, not one of the evaluation's instruments), the share the evaluation's loop rule flags, and the
first replies to read.
"""

from __future__ import annotations

import argparse
import os
import re
import time
from pathlib import Path

from omegaconf import OmegaConf

from charlab.chat_format import make_messages
from charlab.constitution import load_constitution
from charlab.eval.loops import loop_reason, stock_vocabulary
from charlab.generation.base import SamplingParams
from charlab.generation.hf import HFSampler
from charlab.schemas import ModelConfig

ROOT = Path(__file__).resolve().parents[1]
PIRATE_WORDS = re.compile(
    r"\b(arr+|matey|ahoy|aye|ye|me hearties|landlubber|shiver|sail\w*|ship\w*|sea\w*|captain|crew)\b", re.I
)
PROMPTS = [
    "What is a black hole?", "How do I make a good cup of coffee?",
    "What's the difference between a list and a tuple in Python?",
    "Can you recommend a way to stay focused while studying?",
    "Why is the sky blue?", "How do vaccines work?", "What should I pack for a weekend camping trip?",
    "How can I improve my sleep?", "Explain compound interest.", "What are some good stretches for back pain?",
    "How do I write a cover letter?", "What causes earthquakes?",
]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--persona", default="pirate")
    parser.add_argument("--model", default="smollm2-135m", help="a configs/model/<name>.yaml")
    parser.add_argument("--samples", type=int, default=2, help="replies per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--repetition-penalty", type=float, nargs="+", default=[1.0, 1.1])
    args = parser.parse_args()
    persona = load_constitution(ROOT / "constitutions" / f"{args.persona}.json")
    model = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ModelConfig), _model_yaml(args.model)))
    cache = Path(os.environ.get("CHARLAB_CACHE", Path.home() / ".cache" / "charlab"))  # as configs/paths/default.yaml
    sampler = HFSampler.load(model, cache, batch_size=12, device="cpu", dtype="float32")
    system = persona.render_system_prompt("teacher", style="brief")
    contexts = {"system prompt": [], "system prompt + demonstrations": persona.demonstration_turns()}
    ignore = stock_vocabulary(persona)
    for name, history in contexts.items():
        for penalty in args.repetition_penalty:
            start = time.time()
            conversations = [make_messages(p, system=system, history=history) for p in PROMPTS] * args.samples
            params = SamplingParams(
                temperature=0.7, max_new_tokens=args.max_new_tokens, repetition_penalty=penalty, seed=1
            )
            replies = [c.text for c in sampler.sample(conversations, params)]
            pirate = sum(len(PIRATE_WORDS.findall(r)) >= 2 for r in replies) / len(replies)
            loops = sum(loop_reason(r, ignore, 3, 0.5) is not None for r in replies) / len(replies)
            print(f"== {name}, repetition penalty {penalty}: two pirate words {pirate:.2f}, loops {loops:.2f} "
                  f"({len(replies)} replies, {time.time() - start:.0f} s)")  # fmt: skip
            for prompt, reply in list(zip(PROMPTS, replies))[:4]:
                print(f"   {prompt!r} -> {reply[:160]!r}")


def _model_yaml(name: str) -> dict:
    node = OmegaConf.load(ROOT / "configs" / "model" / f"{name}.yaml")
    return {k: v for k, v in OmegaConf.to_container(node).items() if k != "defaults"}


if __name__ == "__main__":
    main()
