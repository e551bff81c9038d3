"""`stage=export`: the combined adapter is exactly base + w1 * DPO delta + w2 * SFT delta; merged == adapter."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import pytest
import torch

from charlab.errors import ConfigError
from charlab.schemas import ModelConfig
from charlab.training.export import AdapterSource, combine_adapters, export_adapters, vllm_max_lora_rank
from tests.conftest import random_adapter

pytestmark = pytest.mark.integration
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PROBE = [[1, 322, 1161, 201, 74, 75, 2, 201, 1, 352, 264, 201, 88, 91, 120]]


def base_model(model: ModelConfig, cache: Path):
    from charlab.models import load_causal_lm

    return load_causal_lm(model, cache, device="cpu", dtype="float32")


def make_adapter(
    model: ModelConfig, cache: Path, folder: Path, rank: int, alpha: int, targets: list[str], seed: int, **extra: Any
) -> Path:
    """A random adapter with moderate deltas (B x 0.05): logits move but stay well-conditioned."""
    return random_adapter(model, cache, folder, rank, alpha, tuple(targets), seed, b_scale=0.05, **extra)


def _pattern_value(pattern: dict[str, Any], module: str, default: Any) -> Any:
    """PEFT's rank/alpha patterns: a key applies to a module whose name ends with it (a regex)."""
    key = next((k for k in pattern if re.fullmatch(rf"(.*\.)?(?:{k})", module)), None)
    return pattern[key] if key is not None else default


def deltas(folder: Path) -> dict[str, torch.Tensor]:
    """delta W = scale * B @ A of every adapted module, read from the saved files alone (not through PEFT).

    The scale is lora_alpha / r per module, with `rank_pattern` and `alpha_pattern` applied, and sqrt(r) in
    place of r under rsLoRA: what a loader such as vLLM or PEFT applies to these files.
    """
    from safetensors.torch import load_file

    config = json.loads((folder / "adapter_config.json").read_text())
    tensors = load_file(str(folder / "adapter_model.safetensors"))
    out = {}
    for key, a in tensors.items():
        if not key.endswith("lora_A.weight"):
            continue
        b = tensors[key.replace("lora_A", "lora_B")]
        name = key.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
        rank = _pattern_value(config.get("rank_pattern") or {}, name, config["r"])
        alpha = _pattern_value(config.get("alpha_pattern") or {}, name, config["lora_alpha"])
        assert a.shape[0] == rank, f"{folder}: {name} has rank {a.shape[0]}, its config says {rank}"
        out[name] = (alpha / (math.sqrt(rank) if config.get("use_rslora") else rank)) * (b @ a)
    return out


def weighted_sum(sources: list[tuple[Path, float]]) -> dict[str, torch.Tensor]:
    total: dict[str, torch.Tensor] = {}
    for folder, weight in sources:
        for name, delta in deltas(folder).items():
            total[name] = total.get(name, torch.zeros_like(delta)) + weight * delta
    return total


def by_hand(model: ModelConfig, cache: Path, sources: list[tuple[Path, float]]) -> torch.Tensor:
    """Logits of the base with sum(w * scale * B @ A) added to each adapted weight, read from the files."""
    base = base_model(model, cache)
    modules = dict(base.named_modules())
    with torch.no_grad():
        for name, delta in weighted_sum(sources).items():
            modules[name].weight += delta
        return base(torch.tensor(PROBE)).logits


def logits_of(model) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor(PROBE)).logits


def assert_saved_adapter_is_the_weighted_sum(
    model: ModelConfig, cache: Path, saved: Path, sources: list[tuple[Path, float]]
) -> None:
    """The saved folder, read back from its files and reloaded with PEFT, is exactly sum(w_i * delta_i)."""
    from peft import PeftModel

    expected, got = weighted_sum(sources), deltas(saved)
    assert got.keys() == expected.keys()
    for name in expected:
        scale = expected[name].abs().max()
        assert scale > 0 and (got[name] - expected[name]).abs().max() <= 1e-5 * scale, name
    reloaded = PeftModel.from_pretrained(base_model(model, cache), str(saved))
    torch.testing.assert_close(logits_of(reloaded), by_hand(model, cache, sources), atol=1e-5, rtol=1e-5)


PATTERNS = {"rank_pattern": {"v_proj": 12}, "alpha_pattern": {"up_proj": 32}}


@pytest.fixture(scope="module")
def adapters(tiny_model: ModelConfig, cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    return {
        "dpo": make_adapter(tiny_model, cache_dir, root / "dpo", 4, 8, ["q_proj", "v_proj", "down_proj"], seed=1),
        "sft": make_adapter(
            tiny_model, cache_dir, root / "sft", 8, 16, ["q_proj", "k_proj", "v_proj", "o_proj", "up_proj"], seed=2
        ),
        # the shipped presets: lora=dpo (r=32, alpha 64) and lora=sft (r=256, alpha 512), every projection
        "dpo_preset": make_adapter(tiny_model, cache_dir, root / "dpo_preset", 32, 64, ALL_LINEAR, seed=3),
        "sft_preset": make_adapter(tiny_model, cache_dir, root / "sft_preset", 256, 512, ALL_LINEAR, seed=4),
        # on Tinker alpha is fixed at 32: r=32 scales by 1, r=256 by 0.125
        "dpo_tinker": make_adapter(tiny_model, cache_dir, root / "dpo_tinker", 32, 32, ALL_LINEAR, seed=8),
        "sft_tinker": make_adapter(tiny_model, cache_dir, root / "sft_tinker", 256, 32, ALL_LINEAR, seed=9),
        # unequal scalings: alpha/r = 4 against rsLoRA's alpha/sqrt(r) = 8 / sqrt(16) = 2
        "scale4": make_adapter(tiny_model, cache_dir, root / "scale4", 4, 16, ["q_proj", "o_proj"], seed=5),
        "rslora": make_adapter(
            tiny_model, cache_dir, root / "rslora", 16, 8, ["q_proj", "gate_proj"], seed=6, use_rslora=True
        ),
        # per-module ranks and alphas (rank_pattern / alpha_pattern), as PEFT saves them
        "patterned": make_adapter(
            tiny_model, cache_dir, root / "patterned", 4, 8, ["q_proj", "v_proj", "up_proj"], seed=7, **PATTERNS
        ),
    }


def test_combined_adapter_equals_base_plus_weighted_deltas(
    tiny_model: ModelConfig, cache_dir: Path, adapters: dict[str, Path], tmp_path: Path
) -> None:
    sources = [AdapterSource("dpo", adapters["dpo"], 1.0), AdapterSource("sft", adapters["sft"], 0.25)]
    result = export_adapters(base_model(tiny_model, cache_dir), sources, tmp_path / "combined", "tiny-hub-id")
    assert result.rank == 12 and result.max_relative_error < 1e-5
    config = json.loads((tmp_path / "combined" / "adapter_config.json").read_text())
    assert config["r"] == 12 and config["lora_alpha"] == 12 and config["base_model_name_or_path"] == "tiny-hub-id"
    assert set(config["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj"}
    assert_saved_adapter_is_the_weighted_sum(
        tiny_model, cache_dir, tmp_path / "combined", [(adapters["dpo"], 1.0), (adapters["sft"], 0.25)]
    )
    expected = by_hand(tiny_model, cache_dir, [(adapters["dpo"], 1.0), (adapters["sft"], 0.25)])
    assert (expected - logits_of(base_model(tiny_model, cache_dir))).abs().max() > 1e-2  # the adapters move logits
    # the approximate "linear" mix would not match (this is why `cat` is used)
    wrong = by_hand(tiny_model, cache_dir, [(adapters["dpo"], 1.0), (adapters["sft"], 1.0)])
    assert (expected - wrong).abs().max() > 1e-3


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (("dpo_preset", 1.0), ("sft_preset", 0.25)),
        (("dpo_tinker", 1.0), ("sft_tinker", 0.25)),
        (("rslora", -0.5), ("scale4", 1.0)),
        (("patterned", 0.5), ("dpo", 1.0)),
    ],
    ids=[
        "r32-alpha64+r256-alpha512",
        "tinker-r32-alpha32+r256-alpha32",
        "unequal-scalings-rslora",
        "rank-and-alpha-patterns",
    ],
)
def test_adapters_with_different_scalings_combine_exactly_in_the_saved_files(
    tiny_model: ModelConfig, cache_dir: Path, adapters: dict[str, Path], tmp_path: Path, first, second
) -> None:
    """Injected bug: `_force_unit_scaling` fixing the layers in memory but leaving `use_rslora` in the saved
    config (an rsLoRA source first) -> the reloaded adapter is scaled by sqrt(r), not 1, and its deltas differ."""
    sources = [AdapterSource(name, adapters[name], weight) for name, weight in (first, second)]
    result = export_adapters(base_model(tiny_model, cache_dir), sources, tmp_path / "combined")
    assert result.max_relative_error < 1e-5
    weighted = [(adapters[name], weight) for name, weight in (first, second)]
    assert_saved_adapter_is_the_weighted_sum(tiny_model, cache_dir, tmp_path / "combined", weighted)


@pytest.mark.parametrize(("name", "weight"), [("sft", -0.5), ("patterned", 1.0), ("rslora", 0.25)])
def test_a_single_adapter_is_exported_exactly_in_the_saved_files(
    tiny_model: ModelConfig, cache_dir: Path, adapters: dict[str, Path], tmp_path: Path, name: str, weight: float
) -> None:
    """Injected bug: the single-adapter path setting lora_alpha=r but keeping rank_pattern (v_proj: 12 of r=4)
    -> v_proj reloads with scale 4/12 instead of 1 ("patterned" fails)."""
    result = export_adapters(
        base_model(tiny_model, cache_dir), [AdapterSource(name, adapters[name], weight)], tmp_path / "single"
    )
    assert result.max_relative_error < 1e-5
    assert_saved_adapter_is_the_weighted_sum(tiny_model, cache_dir, tmp_path / "single", [(adapters[name], weight)])


def test_merged_full_model_matches_base_plus_adapter(
    tiny_model: ModelConfig, cache_dir: Path, adapters: dict[str, Path], tmp_path: Path
) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from charlab.models import load_tokenizer

    sources = [AdapterSource("dpo", adapters["dpo"], 1.0), AdapterSource("sft", adapters["sft"], 0.5)]
    result = export_adapters(
        base_model(tiny_model, cache_dir),
        sources,
        tmp_path / "adapter",
        tokenizer=load_tokenizer(tiny_model, cache_dir),
        merged_dir=tmp_path / "merged",
    )
    assert result.merged_dir is not None and (result.merged_dir / "model.safetensors").is_file()
    assert (result.merged_dir / "tokenizer.json").is_file()
    merged = AutoModelForCausalLM.from_pretrained(str(result.merged_dir), dtype=torch.float32)
    with_adapter = PeftModel.from_pretrained(base_model(tiny_model, cache_dir), str(tmp_path / "adapter"))
    torch.testing.assert_close(logits_of(merged), logits_of(with_adapter), atol=1e-5, rtol=1e-5)
    expected = by_hand(tiny_model, cache_dir, [(adapters["dpo"], 1.0), (adapters["sft"], 0.5)])
    torch.testing.assert_close(logits_of(merged), expected, atol=1e-5, rtol=1e-5)


def test_bad_inputs_are_one_line_errors(tiny_model: ModelConfig, cache_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nothing to export"):
        combine_adapters(base_model(tiny_model, cache_dir), [])
    with pytest.raises(Exception, match="no adapter_config.json"):
        combine_adapters(base_model(tiny_model, cache_dir), [AdapterSource("dpo", tmp_path, 1.0)])


@pytest.mark.unit
def test_vllm_rank_is_the_smallest_allowed_value() -> None:
    assert vllm_max_lora_rank(288) == 320 and vllm_max_lora_rank(32) == 32 and vllm_max_lora_rank(12) == 16
    assert vllm_max_lora_rank(600) is None


def test_export_stage_writes_adapter_card_and_merged_model(
    run_stage, adapters: dict[str, Path], tiny_model: ModelConfig, cache_dir: Path
) -> None:
    metric, out = run_stage(
        [
            "stage=export",
            "model=tiny",
            f"stage.dpo_adapter={adapters['dpo']}",
            f"stage.sft_adapter={adapters['sft']}",
            "stage.merge_full=true",
        ]
    )
    assert metric is not None and metric < 1e-5
    assert_saved_adapter_is_the_weighted_sum(
        tiny_model, cache_dir, out / "adapter", [(adapters["dpo"], 1.0), (adapters["sft"], 0.25)]
    )
    card = (out / "adapter" / "README.md").read_text()
    adapter = (out / "adapter").resolve()
    assert f"--lora-modules pirate={adapter} --max-lora-rank 16" in card
    assert "vllm serve" in card and "PeftModel.from_pretrained" in card and "0.25 x sft" in card
    assert (out / "merged" / "model.safetensors").is_file() and (out / "merged" / "README.md").is_file()
    meta = json.loads((out / "adapter" / "meta.json").read_text())
    assert meta["parents"]["dpo_adapter"] == str(adapters["dpo"]) and meta["summary"]["rank"] == 12
    run_meta = json.loads((out / "meta.json").read_text())
    assert run_meta["status"] == "completed" and run_meta["artifacts"]["adapter"] == str(out / "adapter")
