"""Per-layer attention patterns (`model.layers`) and the bias-free model (`model.bias=false`).

A pattern must build exactly the layers it names (in order, repeated to the depth), give each layer the shared
attention settings it has and its own, sum parameters, KV bytes and FLOPs over the layers it built, keep the
cache contract of a mixed stack, and name itself compactly; a bad pattern is one message naming the fix.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

import attention_lab
from attention_lab import config
from attention_lab.attention import AttentionConfigError, build_attention, count_params, resolve_knobs
from attention_lab.attention.patterns import layer_settings, pattern_label
from attention_lab.errors import UserError
from attention_lab.flops import forward_flops
from attention_lab.model import GPT, KVCache
from tests.helpers import compose_train, one_torch_thread

VOCAB, CONTEXT, D_MODEL = 40, 24, 32
MULTIHEAD = {"name": "multihead", "num_heads": 4, "dropout": 0.0, "qkv_bias": False}
HYBRID = "sliding_window*3+multihead"


def gpt(layers=None, n_layers: int = 4, **kwargs) -> GPT:
    return GPT(VOCAB, CONTEXT, D_MODEL, n_layers, MULTIHEAD, layers=layers, init_seed=0, **kwargs).eval()


# ------------------------------------------------------------------------------------------------ patterns
@pytest.mark.parametrize(
    "layers",
    [
        HYBRID,
        "sliding_window * 3 + multihead",
        ["sliding_window*3", "multihead"],
        ["sliding_window", "sliding_window", "sliding_window", "multihead"],
        [{"name": "sliding_window", "repeat": 3}, "multihead"],
    ],
)
def test_every_spelling_builds_the_same_layers(layers) -> None:
    names = [layer["name"] for layer in layer_settings(MULTIHEAD, layers, 8)]
    assert names == ["sliding_window"] * 3 + ["multihead"] + ["sliding_window"] * 3 + ["multihead"]
    assert pattern_label(layers) == HYBRID


def test_no_pattern_is_the_attention_group_everywhere() -> None:
    assert layer_settings(MULTIHEAD, None, 3) == [MULTIHEAD] * 3
    assert pattern_label(None, "gqa") == "gqa"


def test_layers_inherit_the_shared_settings_they_have_and_keep_their_own() -> None:
    attention = {"name": "gqa", "num_heads": 2, "dropout": 0.2, "qkv_bias": False, "num_kv_heads": 1}
    local, full = layer_settings(attention, [{"name": "sliding_window", "window": 8}, "multihead"], 2)
    assert local == resolve_knobs("sliding_window", {"num_heads": 2, "dropout": 0.2, "window": 8}) | {
        "name": "sliding_window"
    }
    assert full == resolve_knobs("multihead", {"num_heads": 2, "dropout": 0.2}) | {"name": "multihead"}
    assert "num_kv_heads" not in full  # gqa's own setting means nothing to multihead
    assert pattern_label([{"name": "sliding_window", "window": 8}, "multihead"]) == "sliding_window[window=8]+multihead"


@pytest.mark.parametrize(
    ("layers", "n_layers", "says"),
    [
        ("sliding_window*3", 4, "does not divide model.n_layers=4: set model.n_layers to a multiple of 3"),
        ("nope*2", 2, "model.layers: unknown attention variant 'nope': choose one of"),
        ("sliding_window*0", 2, "is not `<variant>` or `<variant>*<k>` (k >= 1)"),
        ("sliding_window+", 2, "is not `<variant>` or `<variant>*<k>`"),
        ([], 2, "is not a layer pattern"),
        ({"name": "multihead"}, 2, "is not a layer pattern"),
        ([{"window": 3}], 2, "needs `name: <variant>`"),
        ([{"name": "sliding_window", "windo": 3}], 1, "layer sliding_window: attention=sliding_window has no setting"),
    ],
)
def test_a_bad_pattern_names_the_fix(layers, n_layers: int, says: str) -> None:
    with pytest.raises(AttentionConfigError) as info:
        layer_settings(MULTIHEAD, layers, n_layers)
    assert says in str(info.value)


# ------------------------------------------------------------------------------------------------ the model
def test_the_model_builds_the_pattern_in_order_and_sums_over_its_layers() -> None:
    model = gpt(HYBRID, n_layers=8)
    kinds = [block.attn.__class__.__name__ for block in model.blocks]
    assert kinds == (["SlidingWindowAttention"] * 3 + ["MultiHeadAttention"]) * 2
    layers = [
        build_attention(layer["name"], D_MODEL, CONTEXT, **{k: v for k, v in layer.items() if k != "name"})
        for layer in layer_settings(MULTIHEAD, HYBRID, 8)
    ]
    assert model.num_params()["attention"] == sum(count_params(layer) for layer in layers)
    assert model.kv_cache_bytes_per_token() == sum(layer.kv_cache_bytes_per_token() for layer in layers)
    mixing = sum(layer.forward_flops(CONTEXT)["mixing"] for layer in layers)
    assert forward_flops(model, CONTEXT)["attention_mixing"] == mixing


def test_a_one_variant_pattern_is_the_uniform_model_bit_for_bit() -> None:
    uniform, patterned = gpt(None), gpt("multihead")
    for (name, a), (_, b) in zip(uniform.state_dict().items(), patterned.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_a_mixed_stack_decodes_like_its_full_forward() -> None:
    model = gpt([{"name": "sliding_window", "window": 4}, "gqa", "linear", "multihead"])
    idx = torch.randint(0, VOCAB, (2, 12))
    cache = KVCache(len(model.blocks))
    with torch.no_grad(), one_torch_thread():
        full = model(idx)
        steps = [model(idx[:, :5], cache=cache)] + [model(idx[:, t : t + 1], cache=cache) for t in range(5, 12)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)


def test_future_tokens_never_change_a_mixed_stacks_past_logits() -> None:
    model = gpt(HYBRID)
    idx = torch.randint(0, VOCAB, (1, 16))
    changed = idx.clone()
    changed[:, 10:] = (changed[:, 10:] + 1) % VOCAB
    with torch.no_grad():
        torch.testing.assert_close(model(changed)[:, :10], model(idx)[:, :10])


# ------------------------------------------------------------------------------------------------ bias
def test_no_bias_removes_every_linear_and_layernorm_bias_and_only_those() -> None:
    with_bias, without = gpt(), gpt(bias=False)
    biases = [m.bias for m in with_bias.modules() if isinstance(m, nn.Linear | nn.LayerNorm) and m.bias is not None]
    assert biases, "the default model has biases"
    assert all(getattr(m, "bias", None) is None for m in without.modules() if isinstance(m, nn.Linear | nn.LayerNorm))
    assert count_params(with_bias) - count_params(without) == sum(b.numel() for b in biases)
    assert [n for n, _ in without.named_parameters() if n.endswith(".bias")] == []
    loss = nn.functional.cross_entropy(without(torch.randint(0, VOCAB, (2, 8))).flatten(0, 1), torch.zeros(16).long())
    loss.backward()
    assert all(p.grad is not None for p in without.parameters())


def test_no_bias_refuses_a_qkv_bias() -> None:
    with pytest.raises(ValueError, match=r"attention\.qkv_bias=false"):
        GPT(VOCAB, CONTEXT, D_MODEL, 1, {**MULTIHEAD, "qkv_bias": True}, bias=False)


# ------------------------------------------------------------------------------------------------ config
def make_cfg(tmp_path: Path, overrides: list[str]):
    return compose_train([f"paths.output_dir={tmp_path / 'run'}", *overrides])


@pytest.mark.parametrize(
    "overrides",
    [
        [f"model.layers={HYBRID}"],
        ["model.layers=[sliding_window*3,multihead]"],
        ["model.layers=[{name:sliding_window,window:8},multihead]", "model.n_layers=2"],
        ["model.bias=false"],
    ],
)
def test_good_patterns_validate(tmp_path: Path, overrides: list[str]) -> None:
    config.validate(make_cfg(tmp_path, overrides))


@pytest.mark.parametrize(
    ("overrides", "says"),
    [
        (["model.layers=sliding_window*3"], "set model.n_layers to a multiple of 3"),
        (["model.layers=3"], "model.layers=3 is not valid"),
        (["model.layers=[{name:sliding_window,window:0},multihead]", "model.n_layers=2"], "sliding_window's window=0"),
        (["model.layers=[linear,multihead]", "model.n_layers=2", "model.position=alibi"], "does not support"),
        (["model.bias=false", "attention.qkv_bias=true"], "set attention.qkv_bias=false"),
        (["model.bias=maybe"], "model.bias='maybe' is not valid"),
    ],
)
def test_bad_settings_are_one_user_error(tmp_path: Path, overrides: list[str], says: str) -> None:
    with pytest.raises(UserError) as info:
        config.validate(make_cfg(tmp_path, overrides))
    assert says in str(info.value)


def test_the_label_is_the_pattern_or_the_variant(tmp_path: Path) -> None:
    assert config.attention_label(make_cfg(tmp_path, ["model.layers=[sliding_window*3,multihead]"])) == HYBRID
    assert config.attention_label(make_cfg(tmp_path, ["attention=gqa"])) == "gqa"


def test_every_run_of_the_compare_recent_preset_is_valid(tmp_path: Path) -> None:
    preset = OmegaConf.load(Path(attention_lab.__file__).parent / "conf" / "experiment" / "compare_recent.yaml")
    values = preset.hydra.sweeper.params["model.layers"].split(",")
    assert HYBRID in values and len(values) == 6
    for value in values:
        cfg = make_cfg(tmp_path, ["experiment=compare_recent", f"model.layers={value}"])
        config.validate(cfg)
        assert config.attention_label(cfg) == value


def test_the_hparams_name_the_pattern_compactly_and_sum_its_layers(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from attention_lab.training.task import flat_hparams

    cfg = make_cfg(tmp_path, ["model.layers=[sliding_window*3,multihead]", "model.d_model=32"])
    model = gpt(HYBRID)
    flat = flat_hparams(cfg, SimpleNamespace(model=model))
    assert flat["model.layers"] == HYBRID
    assert flat["kv_cache_bytes_per_token"] == model.kv_cache_bytes_per_token()
    assert (
        flat_hparams(make_cfg(tmp_path, ["model.d_model=32"]), SimpleNamespace(model=gpt()))["model.layers"] == "none"
    )
