"""Check that the Tinker service is usable from here: key, models, one tiny forward/backward.

    python scripts/check_tinker.py                      # uses $TINKER_API_KEY (and $TINKER_BASE_URL if set)
    python scripts/check_tinker.py --model Qwen/Qwen3-8B

Without a key it says exactly what is missing and exits 1, without touching the network. With a key it lists
the server's models, creates a rank-8 LoRA training client on `--model` (default: the smallest trainable one
listed), runs one forward/backward with cross-entropy on a few tokens and one optimizer step, then closes.
"""

from __future__ import annotations

import argparse
import os
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="base model to try (default: a trainable one the server lists)")
    parser.add_argument("--key-env", default="TINKER_API_KEY", help="environment variable holding the key")
    args = parser.parse_args(argv)

    try:
        import tinker
    except ImportError:
        print("missing: the tinker package (pip install 'charlab[tinker]')", file=sys.stderr)
        return 1
    try:
        from charlab.settings import load_env_file

        load_env_file()
    except ImportError:  # run outside the checkout: the environment alone
        pass
    key = os.environ.get(args.key_env, "").strip()
    if not key:
        print(
            f"missing: ${args.key_env} is not set (export it or put it in .env; keys start with 'tml-'). "
            "Optional: $TINKER_BASE_URL for a non-default service.",
            file=sys.stderr,
        )
        return 1

    service = tinker.ServiceClient(base_url=os.environ.get("TINKER_BASE_URL") or None, api_key=key)
    status = "errored"
    try:
        models = service.get_server_capabilities().supported_models
        print(f"server models ({len(models)}):")
        for m in models:
            flags = ", ".join(k for k in ("trainable", "sampleable") if getattr(m, k, False))
            print(f"  {m.model_name}  (context {m.max_context_length}; {flags})")
        trainable = [m.model_name for m in models if m.trainable and m.model_name]
        model = args.model or (sorted(trainable, key=len)[0] if trainable else None)
        if model is None:
            print("missing: the server lists no trainable model; pass --model", file=sys.stderr)
            return 1
        print(f"creating a rank-8 LoRA training client on {model} ...")
        client = service.create_lora_training_client(base_model=model, rank=8).result()
        tokens = client.get_tokenizer().encode("Hello from charlab, a tiny check.")
        n = len(tokens) - 1
        datum = tinker.Datum(
            model_input=tinker.ModelInput.from_ints(tokens[:-1]),
            loss_fn_inputs={
                "target_tokens": tinker.TensorData(data=tokens[1:], dtype="int64", shape=[n]),
                "weights": tinker.TensorData(data=[1.0] * n, dtype="float32", shape=[n]),
            },
        )
        forward_backward = client.forward_backward([datum], "cross_entropy")
        optim = client.optim_step(tinker.AdamParams(learning_rate=1e-5))
        metrics = forward_backward.result().metrics
        optim.result()
        print(f"forward/backward ok: {metrics}")
        status = "success"
        return 0
    except Exception as err:  # a check reports what went wrong in one line
        print(f"tinker check failed: {type(err).__name__}: {' '.join(str(err).split())[:300]}", file=sys.stderr)
        return 1
    finally:
        try:
            service.close(status).result(timeout=30)
        except Exception:  # closing is best effort
            pass


if __name__ == "__main__":
    sys.exit(main())
