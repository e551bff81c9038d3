"""Training pieces without a model: the DPO loss by hand, loss masks, schedules, batching, LoRA targets."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from charlab.chat_format import ChatFormat, make_messages
from charlab.data.records import DpoExample
from charlab.errors import ConfigError
from charlab.training.backend import TokenSequence
from charlab.training.dpo import (
    DpoItem,
    dpo_loss,
    encode_pairs,
    interleave,
    make_loss_fn,
    reference_key,
    sequence_logprobs,
    split_eval,
    split_pairs,
    squared_log_ratio,
)
from charlab.training.loop import LoopConfig, learning_rate_at, plan_epoch, validate_loop_config
from charlab.training.lora import resolve_target_modules

pytestmark = pytest.mark.unit


def softplus(x: float) -> float:
    """-log sigmoid(-x) = log(1 + e^x)."""
    return math.log1p(math.exp(x))


def test_dpo_loss_equals_the_hand_computed_value() -> None:
    chosen, rejected = torch.tensor([-10.0, -20.0]), torch.tensor([-12.0, -15.0])
    ref_chosen, ref_rejected = torch.tensor([-11.0, -18.0]), torch.tensor([-11.0, -18.0])
    beta = 0.5
    # pair 0: beta * ((-10 + 11) - (-12 + 11)) = 0.5 * 2 = 1.0 ; pair 1: 0.5 * ((-2) - (3)) = -2.5
    expected_dpo = (softplus(-1.0) + softplus(2.5)) / 2
    loss, metrics = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta)
    assert loss.item() == pytest.approx(expected_dpo, rel=1e-6)
    assert metrics["accuracy"] == 0.5
    assert metrics["margin"] == pytest.approx((1.0 - 2.5) / 2)
    assert metrics["reward_chosen"] == pytest.approx((0.5 * 1 + 0.5 * -2) / 2)
    assert metrics["reward_rejected"] == pytest.approx((0.5 * -1 + 0.5 * 3) / 2)
    # with the NLL term: mean over pairs of -chosen / tokens (per-token), times the coefficient
    tokens = torch.tensor([5.0, 4.0])
    loss, metrics = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta, nll_coef=0.1, chosen_tokens=tokens)
    expected_nll = (10 / 5 + 20 / 4) / 2
    assert metrics["nll"] == pytest.approx(expected_nll)
    assert loss.item() == pytest.approx(expected_dpo + 0.1 * expected_nll, rel=1e-6)


def test_the_loss_reads_only_masked_targets_of_interleaved_pairs() -> None:
    # tokens 0..4; mask on the last two tokens -> targets 2 and 3 (predicting tokens 3 and 4) carry the loss
    chosen = TokenSequence((1, 2, 3, 4, 5), (0, 0, 0, 1, 1))
    rejected = TokenSequence((1, 2, 3, 9), (0, 0, 0, 1))
    assert chosen.target_weights == (0, 0, 1, 1) and chosen.num_trained == 2
    item = DpoItem(0, chosen, rejected)
    # prompt positions hold huge values: if the mask leaked, the sums would show it
    logprobs = [torch.tensor([-100.0, -100.0, -1.0, -2.0]), torch.tensor([-100.0, -100.0, -4.0])]
    batch = interleave([item])
    assert batch == [chosen, rejected]
    assert sequence_logprobs(batch, logprobs).tolist() == [-3.0, -4.0]
    refs = torch.tensor([[-3.0, -3.0]])
    loss, metrics = make_loss_fn([item], refs, beta=1.0, nll_coef=0.0, weight=0.25)(batch, logprobs)
    assert loss.item() == pytest.approx(0.25 * softplus(-1.0))  # margin 1 * beta 1, scaled by the weight
    assert metrics["loss"] == pytest.approx(softplus(-1.0))  # metrics are unscaled


def test_encoded_pairs_mask_the_reply_only_and_respect_max_length(tiny_chat: ChatFormat) -> None:
    pairs = [
        DpoExample(prompt="Where is the treasure?", chosen="Under the oak, matey!", rejected="I cannot say.", id="a"),
        DpoExample(prompt="word " * 300, chosen="x", rejected="y", id="too-long"),
    ]
    items, stats = encode_pairs(tiny_chat, pairs, max_length=64)
    assert [it.id for it in items] == ["a"] and stats.dropped == ["too-long"] and stats.truncated == 1
    chosen = items[0].chosen
    prompt_ids = tiny_chat.encode_prompt(make_messages("Where is the treasure?"))
    assert list(chosen.tokens[: len(prompt_ids)]) == prompt_ids
    assert not any(chosen.loss_mask[: len(prompt_ids)]) and all(chosen.loss_mask[len(prompt_ids) :])
    reply = tiny_chat.tokenizer.decode([t for t, m in zip(chosen.tokens, chosen.loss_mask) if m])
    assert reply.startswith("Under the oak, matey!")
    long_reply = DpoExample(prompt="Hi", chosen="very long reply " * 50, rejected="short", id="cut")
    (cut,), stats = encode_pairs(tiny_chat, [long_reply], max_length=32)
    assert len(cut.chosen) == 32 and stats.truncated == 1 and cut.chosen.num_trained > 0


def test_reference_key_changes_with_data_and_model(tiny_chat: ChatFormat) -> None:
    pairs = [DpoExample(prompt="Hi", chosen="Ahoy", rejected="Hello", id="a")]
    items, _ = encode_pairs(tiny_chat, pairs, 64)
    short, _ = encode_pairs(tiny_chat, pairs, 8)
    assert reference_key(items, "m1") == reference_key(items, "m1")
    assert reference_key(items, "m1") != reference_key(items, "m2")
    assert reference_key(items, "m1") != reference_key(short, "m1")


def test_schedules_warm_up_then_decay_to_zero() -> None:
    lrs = [learning_rate_at(s, 10, 1.0, 2, "linear") for s in range(10)]
    assert lrs[0] == pytest.approx(0.5) and lrs[1] == pytest.approx(1.0)
    assert lrs[2] == pytest.approx(1.0) and all(a > b for a, b in zip(lrs[2:], lrs[3:]))
    assert lrs[-1] == pytest.approx(1 / 8)
    cos = [learning_rate_at(s, 10, 1.0, 0, "cosine") for s in range(10)]
    assert cos[0] == pytest.approx(1.0) and cos[5] == pytest.approx(0.5) and 0 < cos[-1] < 0.05
    assert {learning_rate_at(s, 10, 2.0, 0, "constant") for s in range(10)} == {2.0}


def test_epoch_plans_are_seeded_complete_and_length_grouped() -> None:
    lengths = [(i * 37) % 101 + 1 for i in range(200)]
    plan = plan_epoch(lengths, 16, seed=3, epoch=0, group_by_length=True)
    assert plan == plan_epoch(lengths, 16, seed=3, epoch=0, group_by_length=True)
    assert plan != plan_epoch(lengths, 16, seed=3, epoch=1, group_by_length=True)
    assert sorted(i for b in plan for i in b) == list(range(200)) and max(map(len, plan)) == 16
    ungrouped = plan_epoch(lengths, 16, seed=3, epoch=0, group_by_length=False)

    def padding(batches: list[list[int]]) -> int:
        return sum(len(b) * max(lengths[i] for i in b) - sum(lengths[i] for i in b) for b in batches)

    assert padding(plan) < padding(ungrouped) / 3


def test_eval_split_is_seeded_and_disjoint(tiny_chat: ChatFormat) -> None:
    pairs = [DpoExample(prompt=f"q{i}", chosen="a", rejected="b", id=str(i)) for i in range(20)]
    items, _ = encode_pairs(tiny_chat, pairs, 64)
    train, held = split_eval(items, 0.2, seed=1)
    assert len(held) == 4 and len(train) == 16 and not {i.id for i in train} & {i.id for i in held}
    assert [i.id for i in held] == [i.id for i in split_eval(items, 0.2, seed=1)[1]]
    assert split_eval(items, 0.0, seed=1) == (items, [])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"batch_size": 0}, "stage.batch_size=0 is not allowed"),
        ({"epochs": 0}, "stage.epochs=0"),
        ({"learning_rate": 0.0}, "stage.lr=0.0"),
        ({"schedule": "step"}, "linear | cosine | constant"),
        ({"grad_accum": 0}, "stage.grad_accum=0"),
        ({"warmup_ratio": 1.5}, "stage.warmup_ratio"),
    ],
)
def test_loop_settings_fail_with_one_line(change: dict, message: str) -> None:
    cfg = LoopConfig(**{"epochs": 1, "batch_size": 16, "learning_rate": 1e-4, **change})
    with pytest.raises(ConfigError, match=message.replace("|", r"\|")) as err:
        validate_loop_config(cfg, prefix="stage.")
    assert "\n" not in str(err.value)


def tiny_gpt2(vocab_size: int = 100, seed: int = 0) -> Any:
    """A real GPT-2 (transformers' GPT2LMHeadModel, random weights): per block Conv1D `attn.c_attn` (fused qkv),
    `attn.c_proj`, `mlp.c_fc` and `mlp.c_proj`; nothing is downloaded."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=64, vocab_size=vocab_size)
    return GPT2LMHeadModel(config).eval()


def lora_layers(model: Any) -> list[str]:
    from peft.tuners.lora import LoraLayer

    return sorted(n.removeprefix("base_model.model.") for n, m in model.named_modules() if isinstance(m, LoraLayer))


def test_lora_targets_on_a_real_gpt2_adapt_every_block_layer_once() -> None:
    """Injected bugs: no GPT-2 names in the alias table (o_proj -> ConfigError); the leaf `c_proj` as the alias of
    both o_proj and down_proj (asking for o_proj adapts the MLP's c_proj too); gate_proj an error on an ungated MLP."""
    from peft import LoraConfig, get_peft_model

    all_linear = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    targets = resolve_target_modules(tiny_gpt2(), all_linear, "gpt2")
    assert targets == ["c_attn", "attn.c_proj", "c_fc", "mlp.c_proj"]
    model = get_peft_model(tiny_gpt2(), LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False))
    blocks = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
    assert lora_layers(model) == sorted(f"transformer.h.{i}.{layer}" for i in range(2) for layer in blocks)
    ids = torch.tensor([[5, 17, 3, 42, 8, 99]])
    with torch.no_grad():
        tuned = model(ids).logits
        with model.disable_adapter():
            base = model(ids).logits
    assert (tuned - base).abs().max() > 1e-3  # the LoRA on Conv1D (transposed weights) is applied
    only_attention = resolve_target_modules(tiny_gpt2(), ["o_proj"], "gpt2")
    assert only_attention == ["attn.c_proj"]
    model = get_peft_model(tiny_gpt2(), LoraConfig(r=2, target_modules=only_attention))
    assert lora_layers(model) == ["transformer.h.0.attn.c_proj", "transformer.h.1.attn.c_proj"]
    with pytest.raises(ConfigError, match="'w_nothing' matches no linear layer of model 'gpt2'") as err:
        resolve_target_modules(tiny_gpt2(), ["q_proj", "w_nothing"], "gpt2")
    assert "c_attn" in str(err.value) and "lm_head" not in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="target_modules is empty"):
        resolve_target_modules(tiny_gpt2(), [])


def test_lora_targets_on_the_tiny_llama_are_its_own_names(tiny_model, cache_dir) -> None:
    from charlab.models import load_causal_lm

    model = load_causal_lm(tiny_model, cache_dir)
    names = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    assert resolve_target_modules(model, names) == names
    with pytest.raises(ConfigError, match="'gate_prj' matches no linear layer"):  # a typo is never skipped
        resolve_target_modules(model, ["q_proj", "gate_prj"])


def test_rows_share_a_prompt_between_neighbours_and_mask_the_branches_apart() -> None:
    from charlab.training import rows

    prompt = tuple(range(100, 120))  # 20 shared tokens
    chosen = TokenSequence(prompt + (1, 2, 3), (0,) * 20 + (1, 1, 1))
    rejected = TokenSequence(prompt + (7, 8), (0,) * 20 + (1, 1))
    other = TokenSequence((5, 6, 7, 8), (0, 0, 1, 1))
    batch = [chosen, rejected, other]
    assert rows.group(batch) == [[0, 1], [2]]
    assert rows.group([chosen, rejected, chosen]) == [[0, 1], [2]]  # at most two branches per row
    assert rows.group(batch, share_prefixes=False) == [[0], [1], [2]]
    lay = rows.layout(batch, pad_id=0)
    assert lay.ids.shape == (2, 25)  # 20 shared + 3 + 2, not 2 x 23 padded rows
    assert lay.ids[0].tolist() == list(prompt) + [1, 2, 3, 7, 8]
    assert lay.positions[0].tolist() == list(range(23)) + [20, 21]  # the rejected reply continues the prompt
    assert [lay.column(1, t) for t in (19, 20, 21)] == [19, 23, 24] and lay.column(0, 22) == 22
    allowed = lay.mask[0, 0] == 0
    assert allowed[23, :20].all() and not allowed[23, 20:23].any() and allowed[23, 23]  # prompt + itself only
    assert allowed[22, :23].all() and not allowed[22, 23:].any()  # the chosen branch is plainly causal
    # each target is predicted from the right column: the last prompt token predicts both first reply tokens
    seq_ids, ts, row_ids, cols, tokens = rows.targets(batch, lay)
    assert list(zip(seq_ids, ts, row_ids, cols, tokens))[:5] == [
        (0, 19, 0, 19, 1),
        (0, 20, 0, 20, 2),
        (0, 21, 0, 21, 3),
        (1, 19, 0, 19, 7),
        (1, 20, 0, 23, 8),
    ]
    plain = rows.layout([other, TokenSequence((1, 2), (0, 1))], pad_id=0)
    assert plain.mask is None and plain.positions is None and plain.ids[1].tolist() == [1, 2, 0, 0]


def test_no_gradient_forwards_are_cut_by_token_budget_and_by_padding() -> None:
    """Injected bug caught: cutting by the budget alone put a 100-token row beside a 400-token one (75% padding)."""
    from charlab.training import rows

    assert rows.forward_chunks([400, 390, 100, 100, 99], budget=1600) == [range(0, 2), range(2, 5)]
    assert rows.forward_chunks([400, 400, 400, 400, 400], budget=1000) == [range(0, 2), range(2, 4), range(4, 5)]
    assert rows.forward_chunks([3000, 10], budget=1000) == [range(0, 1), range(1, 2)]  # a wide row goes alone
    chunks = rows.forward_chunks([500 - i for i in range(50)], budget=8192)
    assert [i for c in chunks for i in c] == list(range(50))  # every row once, in order
    for c in chunks:
        widths = [500 - i for i in c]
        assert widths[0] * len(c) <= 8192 and 1 - sum(widths) / (widths[0] * len(c)) <= rows.MAX_PADDING


def test_the_held_out_split_keeps_every_sample_of_a_prompt_on_one_side(tiny_chat: ChatFormat) -> None:
    """Injected bug caught: splitting by item (5 samples per prompt then put held-out prompts in training)."""
    pairs = [
        DpoExample(prompt=f"q{p}", chosen=f"a{k}", rejected="b", id=f"p{p}:{k}", prompt_id=f"p{p}", sample_index=k)
        for p in range(10)
        for k in range(5)
    ]
    items, _ = encode_pairs(tiny_chat, pairs, 64)
    train, held = split_pairs(items, 0.2, seed=3)
    assert len(held) == 10 and len(train) == 40  # two whole prompts of five samples
    assert not {i.group for i in train} & {i.group for i in held}
    assert split_pairs(items, 0.2, seed=3) == (train, held)  # seeded
    # without prompt ids (seed-format pairs) the prompt text groups them
    bare = [DpoExample(prompt=p.prompt, chosen=p.chosen, rejected=p.rejected) for p in pairs]
    bare_items, _ = encode_pairs(tiny_chat, bare, 64)
    train, held = split_pairs(bare_items, 0.2, seed=3)
    assert len({i.group for i in held}) == 2 and not {i.group for i in train} & {i.group for i in held}
    # ungrouped items split exactly as before (one sample per prompt: nothing changes for existing runs)
    assert len(split_eval(items, 0.2, seed=3)[1]) == 10


def test_the_kl_term_is_the_mean_squared_log_ratio_over_reply_tokens() -> None:
    """The paper's OpenRLHF `kl_loss_coef`: per sequence mean_t (log pi - log ref)^2 over trained tokens, averaged
    over chosen and rejected. Injected bug caught: counting prompt tokens or leaving the term out of the loss."""
    chosen = TokenSequence((1, 2, 3, 4, 5), (0, 0, 0, 1, 1))
    rejected = TokenSequence((1, 2, 3, 9), (0, 0, 0, 1))
    item = DpoItem(0, chosen, rejected)
    logprobs = [torch.tensor([-100.0, -100.0, -1.0, -2.0]), torch.tensor([-100.0, -100.0, -4.0])]
    ref_tokens = [torch.tensor([0.0, 0.0, -2.0, -2.0]), torch.tensor([0.0, 0.0, -1.0])]  # prompt refs differ wildly
    refs = torch.tensor([[-4.0, -5.0]])
    batch = interleave([item])
    plain, plain_metrics = make_loss_fn([item], refs, beta=1.0, nll_coef=0.0, weight=1.0)(batch, logprobs)
    with_kl, metrics = make_loss_fn([item], refs, 1.0, 0.0, 1.0, kl_coef=0.5, ref_tokens=ref_tokens)(batch, logprobs)
    expected_kl = ((1.0 + 0.0) / 2 + 9.0 / 1) / 2  # chosen: (1^2 + 0^2) / 2 tokens; rejected: 3^2 / 1 token
    assert metrics["kl"] == pytest.approx(expected_kl) and plain_metrics["kl"] == 0.0
    assert with_kl.item() == pytest.approx(plain.item() + 0.5 * expected_kl)
    assert squared_log_ratio(batch, logprobs, logprobs).tolist() == [0.0, 0.0]


def test_cosine_and_linear_decay_stop_at_the_floor() -> None:
    """OpenRLHF's cosine_with_min_lr (the paper: floor 0.1 x lr). Injected bug caught: a floor that linear ignores."""
    cos = [learning_rate_at(s, 11, 1.0, 1, "cosine", min_ratio=0.1) for s in range(11)]
    assert (
        cos[0] == 1.0
        and cos[1] == pytest.approx(1.0)
        and cos[-1] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.9)))
    )
    assert min(cos) >= 0.1 and cos == sorted(cos, reverse=True)
    assert learning_rate_at(10**6, 10**6 + 1, 1.0, 0, "cosine", min_ratio=0.1) == pytest.approx(0.1, abs=1e-9)
    lin = [learning_rate_at(s, 10, 2.0, 0, "linear", min_ratio=0.25) for s in range(10)]
    assert lin[0] == 2.0 and lin[-1] == pytest.approx(2.0 * (0.25 + 0.75 * 0.1))
    assert learning_rate_at(9, 10, 1.0, 0, "linear") == pytest.approx(0.1)  # no floor: as before


def test_backend_kinds_are_a_table_and_an_unknown_one_is_one_line() -> None:
    """`backend.kind` picks a `BACKENDS` entry (schema, maker, identity, SFT's start weights); nothing else branches
    on it. Injected bug this catches: a backend_config that builds a local config for any kind."""
    from charlab.schemas import LocalBackendConfig, ModelConfig, TinkerBackendConfig
    from charlab.training.factory import BACKENDS, backend_config, model_identity, start_weights

    assert set(BACKENDS) == {"local", "tinker"}
    assert type(backend_config({"kind": "tinker"})) is TinkerBackendConfig
    assert type(backend_config({"kind": "local"})) is LocalBackendConfig
    with pytest.raises(ConfigError, match=r"^backend.kind='tinkr' is not allowed; use local or tinker$"):
        backend_config({"kind": "tinkr"})
    model = ModelConfig(name="m", name_or_path="org/m", tinker_name="Org/M")
    assert model_identity(TinkerBackendConfig(kind="tinker"), model) == "tinker|m|org/m|||Org/M"
    assert start_weights(LocalBackendConfig(kind="local"), "/runs/dpo/adapter") == "/runs/dpo/adapter"
    assert start_weights(TinkerBackendConfig(kind="tinker"), "tinker://run/state") == "tinker://run/state"
    assert start_weights(TinkerBackendConfig(kind="tinker"), "/no/such/dpo/adapter") is None  # no Tinker state
    assert BACKENDS["local"].local and not BACKENDS["tinker"].local


def test_both_backends_offer_the_whole_protocol_so_nobody_needs_getattr() -> None:
    """Every `TrainingBackend` member exists on both backends (Tinker's made without a connection; the local
    backend's members are its class's or set in its `__init__`), and no stage or the loop reaches a backend
    extra with `getattr`. Injected bug this catches: a protocol member one backend lacks (removed
    `TinkerBackend.sync_from_main`: the loop's call fails on Tinker)."""
    import ast
    import inspect

    from charlab.settings import PACKAGE_DIR
    from charlab.training.backend import TrainingBackend
    from charlab.training.local import LocalBackend
    from charlab.training.tinker_backend import TinkerBackend

    members = {m for m in dir(TrainingBackend) if not m.startswith("_")} | set(TrainingBackend.__annotations__)
    assert {"supports_packing", "last_export", "remote_artifacts", "no_sync", "sync_from_main"} <= members
    assert isinstance(TinkerBackend(None, None, None, "m", "base"), TrainingBackend)
    init = ast.parse(inspect.getsource(LocalBackend.__init__).strip())
    set_in_init = {t.attr for node in ast.walk(init) if isinstance(node, ast.Assign) for t in node.targets
                   if isinstance(t, ast.Attribute)}  # fmt: skip
    assert not {m for m in members if not hasattr(LocalBackend, m) and m not in set_in_init}
    reaches = [
        f"{path.relative_to(PACKAGE_DIR)}:{n}"
        for path in [*(PACKAGE_DIR / "stages").glob("*.py"), PACKAGE_DIR / "training" / "loop.py"]
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if "getattr(backend" in line or "getattr(self.backend" in line
    ]
    assert not reaches, reaches


def test_every_backend_option_is_a_backends_entry_and_back() -> None:
    """`configs/backend/*.yaml` (what the Studio and Hydra offer) and `BACKENDS` name the same kinds."""
    import yaml

    from charlab.settings import configs_dir
    from charlab.training.factory import BACKENDS

    files = {p.stem: yaml.safe_load(p.read_text(encoding="utf-8")) for p in (configs_dir() / "backend").glob("*.yaml")}
    assert set(files) == set(BACKENDS)
    assert all(data["kind"] == name for name, data in files.items())


@pytest.mark.parametrize("head_trains", [False, True])
def test_the_fused_head_gives_log_softmax_and_its_gradients(head_trains: bool) -> None:
    """Frozen head: the gradient comes from the direction kept in forward; a training head: logits recomputed."""
    from charlab.training.kernels import head_logprobs

    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(37, 16, generator=gen, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(101, 16, generator=gen, dtype=torch.float64, requires_grad=head_trains)
    targets = torch.randint(0, 101, (37,), generator=gen)
    upstream = torch.randn(37, generator=gen, dtype=torch.float64)
    expected = torch.log_softmax(hidden @ weight.t(), -1).gather(-1, targets[:, None]).squeeze(-1)
    want = torch.autograd.grad((expected * upstream).sum(), [hidden, weight] if head_trains else [hidden])
    got_value = head_logprobs(hidden, weight, targets)
    got = torch.autograd.grad((got_value * upstream).sum(), [hidden, weight] if head_trains else [hidden])
    assert torch.allclose(got_value.double(), expected, atol=1e-6)
    for g, w in zip(got, want):
        assert torch.allclose(g.double(), w, atol=1e-6)
