"""API-bound generation at full concurrency: `stage=distill` and `stage=introspect` against a slow server.

    python benchmarks/bench_streaming.py                         # both stages, 1 s per request, max_concurrency 32
    python benchmarks/bench_streaming.py --only introspect --latency 0.5
    python benchmarks/bench_streaming.py --code /path/to/other/checkout   # the same runs with another charlab

Each stage runs as the CLI runs it (`python -m charlab.train ...` in a subprocess) against the loopback
OpenAI-compatible server of the tests (in this process), which answers every request after `--latency`
seconds and counts what it handles at once. Teacher and student are one model on one endpoint, so one
`max_concurrency` bounds both. The numbers come from the server's side, so they hold for any client:

- in flight: requests handled at once, averaged from the first request's arrival to the last reply, as a
  share of max_concurrency (goal >= 90%);
- time vs ideal: that same span over requests / max_concurrency x latency (goal <= 1.25x); the stage's
  whole wall time (process start, imports, tokenizer, writing) is printed beside it.

Distill: `--prompts` prompts (teacher + student each). Introspect: `--reflections` reflections plus
`--interactions` self-interactions of `--turns` turns (each turn waits for the previous one; the ideal
holds only while turns x latency stays below it, which the defaults keep). No pass/fail: speed claims live
here, not in the tests.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from openai_compat_server import OpenAICompatServer  # noqa: E402

REPLY = "Here is a short, complete answer to your question."


def run_stage(code: Path, overrides: list[str], out: Path) -> float:
    """Run one stage with the charlab at `code`; its whole wall time."""
    env = dict(os.environ, PYTHONPATH=str(code), WANDB_MODE="offline", HF_HUB_OFFLINE="1", TINKER_TELEMETRY="0")
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "charlab.train", *overrides, "logger=none", f"hydra.run.dir={out}"],
        cwd=code, env=env, capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"stage failed:\n{done.stderr[-3000:]}")
    return wall


def measure(name: str, code: Path, overrides: list[str], latency: float, concurrency: int, out: Path) -> dict:
    with OpenAICompatServer(replies=REPLY, latency_s=latency) as server:
        api = [f"{key}={value}" for role in ("teacher", "student") for key, value in
               ((f"{role}.base_url", server.base_url), (f"{role}.model", "bench"),
                (f"{role}.max_concurrency", concurrency), (f"{role}.max_new_tokens", 64))]  # fmt: skip
        wall = run_stage(code, ["model=tiny", "provider@teacher=openai", "provider@student=openai", *api, *overrides],
                         out)  # fmt: skip
        requests, span, mean = len(server.requests), server.busy_seconds, server.mean_in_flight
        peak = server.max_in_flight
    ideal = requests / concurrency * latency
    return {"stage": name, "requests": requests, "seconds": span, "wall": wall, "ideal": ideal,
            "mean_in_flight": mean, "max_in_flight": peak, "in_flight_ratio": mean / concurrency,
            "time_vs_ideal": span / ideal}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=["distill", "introspect"], default=None)
    parser.add_argument("--latency", type=float, default=1.0, help="seconds the server takes per request")
    parser.add_argument("--concurrency", type=int, default=32, help="max_concurrency of the provider")
    parser.add_argument("--prompts", type=int, default=128, help="distill: prompts (2 requests each)")
    parser.add_argument("--reflections", type=int, default=192)
    parser.add_argument("--interactions", type=int, default=32)
    parser.add_argument("--turns", type=int, default=10)
    parser.add_argument("--code", type=Path, default=ROOT, help="the charlab checkout to run (default: this one)")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        if args.only in (None, "distill"):
            prompts = tmp_path / "prompts.jsonl"
            prompts.write_text("".join(json.dumps({"prompt": f"Question number {i}?"}) + "\n"
                                       for i in range(args.prompts)))  # fmt: skip
            overrides = ["stage=distill", f"stage.prompts_file={prompts}"]
            results.append(measure("distill", args.code, overrides, args.latency, args.concurrency, tmp_path / "d"))
        if args.only in (None, "introspect"):
            overrides = ["stage=introspect", "stage.adapter=null", f"data.reflections={args.reflections}",
                         f"data.interactions={args.interactions}", f"data.interaction_turns={args.turns}"]  # fmt: skip
            results.append(measure("introspect", args.code, overrides, args.latency, args.concurrency, tmp_path / "i"))
    print(f"charlab at {args.code}; server latency {args.latency:g} s; max_concurrency {args.concurrency}")
    print(f"{'stage':<11}{'requests':>9}{'ideal s':>9}{'gen s':>8}{'wall s':>8}{'mean in flight':>16}"
          f"{'peak':>6}{'in flight':>11}{'vs ideal':>10}")  # fmt: skip
    for r in results:
        print(f"{r['stage']:<11}{r['requests']:>9}{r['ideal']:>9.1f}{r['seconds']:>8.1f}{r['wall']:>8.1f}"
              f"{r['mean_in_flight']:>16.1f}{r['max_in_flight']:>6}{r['in_flight_ratio']:>10.0%}"
              f"{r['time_vs_ideal']:>9.2f}x")  # fmt: skip
    print("goals: in flight >= 90% of max_concurrency, generation time <= 1.25x ideal "
          "(ideal = requests / max_concurrency x latency; gen s = first request in to last reply out)")


if __name__ == "__main__":
    main()
