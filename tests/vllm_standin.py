"""A stand-in for `vllm serve` in tests of the managed-server lifecycle: vLLM's command line, a loopback server.

    python tests/vllm_standin.py --model M --served-model-name N --host 127.0.0.1 --port P [--max-model-len L]
        [--enable-lora --max-lora-rank R ...]          # any other vLLM flag is accepted and ignored

It is `tests/openai_compat_server.py` behind the flags charlab passes to `vllm serve`: `/health`, `/v1/models`
(with `max_model_len` when given), `/v1/load_lora_adapter`, and chat completions that say which model answered on
which port ("<model> on port <P>."), refusing prompts over `--max-model-len` words as vLLM does. With the
environment variable `STANDIN_DIE_AFTER=n` it prints an error line and exits (status 3) after n chat requests:
a server that dies in the middle of a stage.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.openai_compat_server import OpenAICompatServer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--served-model-name", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--max-model-len", type=int)
    args, _ = parser.parse_known_args()
    die_after = int(os.environ.get("STANDIN_DIE_AFTER") or 0)
    count = {"chat": 0}
    lock = threading.Lock()

    def reply(messages: list[dict[str, str]]) -> str:
        with lock:
            count["chat"] += 1
            if die_after and count["chat"] > die_after:
                print("RuntimeError: CUDA error: an illegal memory access was encountered (stand-in)", flush=True)
                os._exit(3)
        return f"{args.served_model_name} on port {args.port}."

    server = OpenAICompatServer(replies=reply, models=[args.served_model_name], max_context=args.max_model_len,
                                port=args.port)  # fmt: skip
    with server:
        print(f"stand-in vllm serving {args.model} as {args.served_model_name} at {server.base_url}", flush=True)
        threading.Event().wait()


if __name__ == "__main__":
    main()
