"""`stage=export`: the combined adapter is exactly base + w1 * DPO delta + w2 * SFT delta; merged == adapter."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from charlab.errors import ConfigError
from charlab.schemas import ModelConfig
from charlab.training.export import AdapterSource, combine_adapters, export_adapters, vllm_max_lora_rank

pytestmark = pytest.mark.integration
PROBE = [[1, 322, 1161, 201, 74, 75, 2, 201, 1, 352, 264, 201, 88, 91, 120]]


def base_model(model: ModelConfig, cache: Path):
    from charlab.models import load_causal_lm

    return load_causal_lm(model, cache, device="cpu", dtype="float32")


def make_adapter(model: ModelConfig, cache: Path, folder: Path, rank: int, alpha: int, targets: list[str], seed: int):
    """A random (non-zero) LoRA adapter on the tiny model, saved as a PEFT folder."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets, init_lora_weights=False)
    peft_model = get_peft_model(base_model(model, cache), config)
    with torch.no_grad():  # keep deltas moderate so logits move but stay well-conditioned
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.mul_(0.05)
    peft_model.save_pretrained(str(folder))
    return folder


def by_hand(model: ModelConfig, cache: Path, sources: list[tuple[Path, float]]) -> torch.Tensor:
    """Logits of the base with sum(w * alpha/r * B @ A) added to each adapted weight, read from the files."""
    from safetensors.torch import load_file

    base = base_model(model, cache)
    modules = dict(base.named_modules())
    with torch.no_grad():
        for folder, weight in sources:
            config = json.loads((folder / "adapter_config.json").read_text())
            scaling = config["lora_alpha"] / config["r"]
            tensors = load_file(str(folder / "adapter_model.safetensors"))
            for key, a in tensors.items():
                if not key.endswith("lora_A.weight"):
                    continue
                b = tensors[key.replace("lora_A", "lora_B")]
                name = key.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
                modules[name].weight += weight * scaling * (b @ a)
        return base(torch.tensor(PROBE)).logits


def logits_of(model) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor(PROBE)).logits


@pytest.fixture(scope="module")
def adapters(tiny_model: ModelConfig, cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    return {
        "dpo": make_adapter(tiny_model, cache_dir, root / "dpo", 4, 8, ["q_proj", "v_proj", "down_proj"], seed=1),
        "sft": make_adapter(
            tiny_model, cache_dir, root / "sft", 8, 16, ["q_proj", "k_proj", "v_proj", "o_proj", "up_proj"], seed=2
        ),
    }


def test_combined_adapter_equals_base_plus_weighted_deltas(
    tiny_model: ModelConfig, cache_dir: Path, adapters: dict[str, Path], tmp_path: Path
) -> None:
    from peft import PeftModel

    sources = [AdapterSource("dpo", adapters["dpo"], 1.0), AdapterSource("sft", adapters["sft"], 0.25)]
    result = export_adapters(base_model(tiny_model, cache_dir), sources, tmp_path / "combined", "tiny-hub-id")
    assert result.rank == 12 and result.max_relative_error < 1e-5
    config = json.loads((tmp_path / "combined" / "adapter_config.json").read_text())
    assert config["r"] == 12 and config["lora_alpha"] == 12 and config["base_model_name_or_path"] == "tiny-hub-id"
    assert set(config["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj"}

    loaded = PeftModel.from_pretrained(base_model(tiny_model, cache_dir), str(tmp_path / "combined"))
    expected = by_hand(tiny_model, cache_dir, [(adapters["dpo"], 1.0), (adapters["sft"], 0.25)])
    base = logits_of(base_model(tiny_model, cache_dir))
    got = logits_of(loaded)
    assert (expected - base).abs().max() > 1e-2  # the adapters really move the logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    # the approximate "linear" mix would not match (this is why `cat` is used)
    wrong = by_hand(tiny_model, cache_dir, [(adapters["dpo"], 1.0), (adapters["sft"], 1.0)])
    assert (got - wrong).abs().max() > 1e-3


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


def test_single_adapter_with_negative_weight_is_exact(
    tiny_model: ModelConfig, cache_dir: Path, adapters: dict[str, Path]
) -> None:
    model, error = combine_adapters(base_model(tiny_model, cache_dir), [AdapterSource("sft", adapters["sft"], -0.5)])
    assert error < 1e-5
    torch.testing.assert_close(
        logits_of(model), by_hand(tiny_model, cache_dir, [(adapters["sft"], -0.5)]), atol=1e-5, rtol=1e-5
    )


def test_bad_inputs_are_one_line_errors(tiny_model: ModelConfig, cache_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nothing to export"):
        combine_adapters(base_model(tiny_model, cache_dir), [])
    with pytest.raises(Exception, match="no adapter_config.json"):
        combine_adapters(base_model(tiny_model, cache_dir), [AdapterSource("dpo", tmp_path, 1.0)])


@pytest.mark.unit
def test_vllm_rank_is_the_smallest_allowed_value() -> None:
    assert vllm_max_lora_rank(288) == 320 and vllm_max_lora_rank(32) == 32 and vllm_max_lora_rank(12) == 16
    assert vllm_max_lora_rank(600) is None


def test_export_stage_writes_adapter_card_and_merged_model(run_stage, adapters: dict[str, Path]) -> None:
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
    card = (out / "adapter" / "README.md").read_text()
    adapter = (out / "adapter").resolve()
    assert f"--lora-modules pirate={adapter} --max-lora-rank 16" in card
    assert "vllm serve" in card and "PeftModel.from_pretrained" in card and "0.25 x sft" in card
    assert (out / "merged" / "model.safetensors").is_file() and (out / "merged" / "README.md").is_file()
    meta = json.loads((out / "adapter" / "meta.json").read_text())
    assert meta["parents"]["dpo_adapter"] == str(adapters["dpo"]) and meta["summary"]["rank"] == 12
    run_meta = json.loads((out / "meta.json").read_text())
    assert run_meta["status"] == "completed" and run_meta["artifacts"]["adapter"] == str(out / "adapter")
