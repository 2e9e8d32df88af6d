"""The analytic FLOPs of flops.py against torch's flop counter, for every variant, and the peak-FLOP/s table.

The counter sees the matrix products the code really runs. SDPA is forced onto its math backend: on the CPU its
fused kernel is an op the counter has no formula for (it would count 0), while the math backend runs the same
full (T, T) products that the counter's formula for the GPU kernels assumes (causal or not).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from attention_lab.attention import available, get_variant
from attention_lab.devices import device_peak_flops, matmul_format, peak_flops
from attention_lab.flops import forward_flops, forward_flops_per_token, training_flops_per_token
from attention_lab.model import GPT
from tests.helpers import one_torch_thread

VOCAB, D_MODEL = 50, 32
LENGTHS = (32, 96)  # 96 > linear's chunk of 64: the padded last chunk is counted too


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with one_torch_thread():
        yield


def tiny_gpt(name: str, position: str = "learned", context_length: int = max(LENGTHS)) -> GPT:
    """2 layers, d_model 32, the registry's default settings (4 heads of 8; latent_dim 32; window 32)."""
    attention = {"name": name, **get_variant(name).knobs}
    return GPT(VOCAB, context_length, D_MODEL, 2, attention, position=position).eval()


def counted(model: GPT, t: int, backward: bool = False) -> tuple[int, int]:
    """(FLOPs of the whole model, FLOPs inside layer 0's attention) by torch's counter, batch of one."""
    idx = torch.randint(0, VOCAB, (1, t))
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        logits = model(idx)
        if backward:
            F.cross_entropy(logits.flatten(0, 1), idx.flatten()).backward()
    layer0 = counter.get_flop_counts().get("GPT.blocks.0.attn", {})
    return counter.get_total_flops(), sum(layer0.values())


def assert_close(analytic: float, reference: float, what: str) -> None:
    assert reference > 0, f"{what}: the counter saw no FLOPs"
    assert abs(analytic - reference) <= 0.05 * reference, f"{what}: analytic {analytic:,} vs counted {reference:,}"


@pytest.mark.parametrize("t", LENGTHS)
@pytest.mark.parametrize("name", available())
def test_forward_flops_match_the_counter(name: str, t: int) -> None:
    model = tiny_gpt(name)
    total, attention = counted(model, t)
    assert_close(forward_flops(model, t)["total"], total, f"{name} T={t} model")
    assert_close(sum(model.blocks[0].attn.forward_flops(t).values()), attention, f"{name} T={t} attention")


@pytest.mark.parametrize(
    ("name", "position"),
    [("multihead", "rope"), ("latent", "rope"), ("linear", "rope"), ("gqa", "alibi"), ("sdpa", "alibi")],
)
def test_position_schemes_inside_attention_are_counted(name: str, position: str) -> None:
    """Latent's decoupled rope adds projections and widens the scores; linear's rope adds a product."""
    model = tiny_gpt(name, position)
    for t in LENGTHS:
        total, attention = counted(model, t)
        assert_close(forward_flops(model, t)["total"], total, f"{name}+{position} T={t} model")
        assert_close(sum(model.blocks[0].attn.forward_flops(t).values()), attention, f"{name}+{position} attention")
    if position == "rope" and name in ("latent", "linear"):  # what rope adds is counted, not just tolerated
        assert forward_flops(model, 32)["total"] > forward_flops(tiny_gpt(name), 32)["total"]


@pytest.mark.parametrize(
    ("name", "position", "settings"),
    [
        ("sdpa", "learned", {"sinks": True}),
        ("gqa", "alibi", {"sinks": True, "qk_norm": True}),
        ("latent", "rope", {"sinks": True, "qk_norm": True}),
        ("sdpa", "learned", {"logit_softcap": 30.0, "sinks": True}),
        ("multihead", "rope", {"qk_norm": True, "logit_softcap": 30.0, "sinks": True}),
        ("linear", "learned", {"qk_norm": True}),
    ],
)
def test_softmax_settings_are_counted(name: str, position: str, settings: dict) -> None:
    """QK-norm, the soft cap and the sink logits add no matrix product; only SDPA's sink key adds one key column per
    score row (the explicit formula concatenates the sink after the product). The attention layer is exact."""
    attention = {"name": name, **get_variant(name).knobs, **settings}
    model = GPT(VOCAB, max(LENGTHS), D_MODEL, 2, attention, position=position).eval()
    for t in LENGTHS:
        total, counted_attention = counted(model, t)
        assert sum(model.blocks[0].attn.forward_flops(t).values()) == counted_attention, f"{name} {settings} T={t}"
        assert_close(forward_flops(model, t)["total"], total, f"{name} {settings} T={t} model")
    plain = tiny_gpt(name, position).blocks[0].attn
    extra = model.blocks[0].attn.forward_flops(32)["mixing"] - plain.forward_flops(32)["mixing"]
    sdpa_sink = settings.get("sinks") and not settings.get("logit_softcap") and name != "multihead"
    assert (extra > 0) == bool(sdpa_sink)


@pytest.mark.parametrize(("name", "position"), [("sdpa", "learned"), ("linear", "rope"), ("simplified", "learned")])
def test_training_flops_are_three_forwards(name: str, position: str) -> None:
    """Forward + backward = 3 x forward: each product's backward is two products of its size."""
    model = tiny_gpt(name, position).train()
    total, _ = counted(model, 64, backward=True)
    assert_close(64 * training_flops_per_token(model, 64), total, f"{name} forward + backward")


def test_breakdown_adds_up_and_scales_with_length() -> None:
    """Softmax attention's mixing per token grows linearly in T (the (T, T) products), linear attention's does
    not (past one chunk); projections, MLP and head per token do not depend on T."""
    multihead, linear = tiny_gpt("multihead"), tiny_gpt("linear")
    short, long = forward_flops_per_token(multihead, 32), forward_flops_per_token(multihead, 96)
    assert long["attention_mixing"] == 3 * short["attention_mixing"]
    for part in ("attention_projections", "mlp", "head"):
        assert long[part] == short[part]
    d = D_MODEL
    assert short["attention_projections"] == 2 * 8 * d * d  # 2 layers x (Q, K, V, out) x 2 d^2
    assert short["mlp"] == 2 * 16 * d * d and short["head"] == 2 * d * VOCAB
    assert short["total"] == sum(v for k, v in short.items() if k != "total")
    lin_64, lin_128 = forward_flops_per_token(linear, 64), forward_flops_per_token(linear, 128)
    assert lin_64["attention_mixing"] == lin_128["attention_mixing"]  # whole chunks: constant per token


def test_peak_table_lookup(monkeypatch: pytest.MonkeyPatch) -> None:
    assert peak_flops("NVIDIA H100 80GB HBM3", "bf16-mixed") == pytest.approx(989.4e12)
    assert peak_flops("NVIDIA H100 PCIe", "16-mixed") == pytest.approx(756e12)  # form factor before the generic
    assert peak_flops("NVIDIA H200", "bf16-true") == pytest.approx(989.4e12)
    assert peak_flops("NVIDIA A100-SXM4-80GB", "bf16-mixed") == pytest.approx(312e12)
    assert peak_flops("NVIDIA A10G", "bf16-mixed") == pytest.approx(125e12)  # A10G is not an A100, nor A100 an A10
    assert peak_flops("NVIDIA L40S", "bf16-mixed") == pytest.approx(362.05e12)  # not the L4
    assert peak_flops("NVIDIA L4", "bf16-mixed") == pytest.approx(121e12)
    assert peak_flops("NVIDIA GeForce RTX 4090", "bf16-mixed") == pytest.approx(165.2e12)
    assert peak_flops("Tesla V100-SXM2-16GB", "16-mixed") == pytest.approx(125e12)
    assert peak_flops("Tesla T4", "bf16-mixed") is None  # Turing has no bf16 tensor cores
    assert peak_flops("Some Future GPU", "bf16-mixed") is None
    assert peak_flops("NVIDIA A100 80GB PCIe", "64-true") is None
    assert device_peak_flops(torch.device("cpu"), "32-true") is None
    assert peak_flops("NVIDIA A100 80GB PCIe", "32-true") == pytest.approx(19.5e12)  # fp32: "highest" precision
    monkeypatch.setattr(torch, "get_float32_matmul_precision", lambda: "high")  # tf32 allowed
    assert matmul_format("32-true") == "tf32"
    assert peak_flops("NVIDIA A100 80GB PCIe", "32-true") == pytest.approx(156e12)
