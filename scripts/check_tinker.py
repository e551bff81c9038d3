"""Check that the Tinker service is usable from here: key, models, one tiny forward/backward.

    python scripts/check_tinker.py                      # uses $TINKER_API_KEY (and $TINKER_BASE_URL if set)
    python scripts/check_tinker.py --model Qwen/Qwen3-8B

Without a key it says exactly what is missing and exits 1, without touching the network. With a key it lists
the server's models, creates a rank-8 LoRA training client on `--model` (default: the smallest trainable one
listed), runs one forward/backward with cross-entropy on a few tokens and one optimizer step, exports the
weights to read the LoRA alpha the service trains with (charlab's `backend.lora_alpha` must equal it), then
closes.
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
        alpha = exported_lora_alpha(service, client)
        expected = configured_lora_alpha()
        print(f"LoRA alpha the service trains with: {alpha} (configs/backend/tinker.yaml lora_alpha: {expected})")
        if expected is not None and alpha is not None and float(alpha) != float(expected):
            print(f"mismatch: set lora_alpha: {alpha} in configs/backend/tinker.yaml", file=sys.stderr)
            return 1
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


def exported_lora_alpha(service: object, client: object) -> object:
    """`lora_alpha` of the adapter_config.json the service exports for `client`'s weights."""
    import httpx

    export = client.save_weights_external("charlab-check-alpha").result().path  # type: ignore[attr-defined]
    urls = service.create_rest_client().get_external_weights_urls(export).result().urls  # type: ignore[attr-defined]
    config = httpx.get(urls["adapter_config.json"], timeout=60, follow_redirects=True).json()
    return config.get("lora_alpha")


def configured_lora_alpha() -> object:
    """`lora_alpha` in this checkout's configs/backend/tinker.yaml (None outside a checkout)."""
    from pathlib import Path

    import yaml

    path = Path(__file__).resolve().parent.parent / "configs" / "backend" / "tinker.yaml"
    return yaml.safe_load(path.read_text()).get("lora_alpha") if path.is_file() else None


if __name__ == "__main__":
    sys.exit(main())
