"""GPU readiness (`attention-lab gpu-check` runs these with `pytest -m gpu`): bf16 parity of every variant, the SDPA
kernel each variant relies on, FlexAttention for sliding_window, and DDP on two GPUs.

Skipped without CUDA (CI has none). Stated tolerances, as a fraction of the largest element of the float32
reference on the same GPU: bf16 autocast (what trainer.precision=bf16-mixed runs) forward within FORWARD_TOL and
every gradient (input and parameters) within GRAD_TOL. bf16 keeps 8 significant bits (2^-8 = 3.9e-3 per rounding);
measured with CPU bf16 autocast at these shapes over three seeds: forward <= 1.6e-2 (sigmoid), gradients <= 3.9e-2
(retention, whose GroupNorm divides by each head's spread and so amplifies rounding where a decayed sum cancels).
A broken kernel (a lost mask, a wrong scale) is off by O(1): the negative control shows the check would see it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from attention_lab.attention import available, build_attention
from attention_lab.attention.functional import merge_heads
from tests.helpers import attention_knobs
from tests.training.helpers import CORPUS, LEAN_CALLBACKS, read_metrics, run_folders, run_script, tiny

CUDA = torch.cuda.is_available()
BF16 = CUDA and torch.cuda.is_bf16_supported()
AMPERE = CUDA and torch.cuda.get_device_capability() >= (8, 0)  # flash attention needs sm80 or newer
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not CUDA, reason="needs CUDA")]
needs_bf16 = pytest.mark.skipif(not BF16, reason="needs a CUDA GPU with bfloat16")
needs_ampere = pytest.mark.skipif(not AMPERE, reason="needs a CUDA GPU of compute capability 8.0 or newer")

FORWARD_TOL, GRAD_TOL = 3e-2, 1e-1
D, T, B = 128, 160, 2  # 4 heads of 32; T spans linear's and retention's 64-token chunks and many windows of 5


def relative_error(low: torch.Tensor, reference: torch.Tensor) -> float:
    return ((low.float() - reference).abs().max() / reference.abs().max().clamp_min(1e-12)).item()


def well_scaled(name: str, d_model: int = D, **overrides) -> nn.Module:
    """`name` on CUDA with every matrix drawn N(0, 1/fan_in): scores of order 1, so no softmax saturates (the
    chapter's self_attention_v1 draws torch.rand weights, whose scores tie after bf16 rounding)."""
    torch.manual_seed(0)
    module = build_attention(name, d_model, T, **attention_knobs(name, **overrides))
    with torch.no_grad():
        for p in module.parameters():
            if p.dim() == 2:
                p.normal_(0.0, p.shape[-1] ** -0.5)
    return module.cuda().train()


def forward_backward(module: nn.Module, x: torch.Tensor, grad: torch.Tensor, bf16: bool):
    """Output, input gradient and parameter gradients of one training step, in bf16 autocast or float32."""
    module.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_(True)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
        out = module(x)
    out.float().backward(grad)
    params = {n: p.grad.detach().clone() for n, p in module.named_parameters() if p.grad is not None}
    return out.detach().float(), x.grad.detach().clone(), params


def inputs(d_model: int = D, t: int = T) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return torch.randn(B, t, d_model, generator=gen).cuda(), torch.randn(B, t, d_model, generator=gen).cuda()


# --- bf16 parity for every variant --------------------------------------------------------------------------
@needs_bf16
@pytest.mark.parametrize("name", available())
def test_bf16_autocast_matches_float32_forward_and_gradients(name: str) -> None:
    module = well_scaled(name)
    x, grad = inputs()
    out32, dx32, dp32 = forward_backward(module, x, grad, bf16=False)
    out16, dx16, dp16 = forward_backward(module, x, grad, bf16=True)
    assert torch.isfinite(out16).all() and torch.isfinite(dx16).all()
    assert relative_error(out16, out32) <= FORWARD_TOL
    assert relative_error(dx16, dx32) <= GRAD_TOL, "input gradient"
    assert dp16.keys() == dp32.keys()
    worst = max(((relative_error(dp16[n], dp32[n]), n) for n in dp32), default=(0.0, ""))
    assert worst[0] <= GRAD_TOL, f"gradient of {worst[1]}: {worst[0]:.2e}"


@needs_bf16
def test_the_tolerance_would_catch_a_lost_causal_mask() -> None:
    """Negative control: the same comparison, against a non-causal reference, fails by far."""
    module = well_scaled("sdpa")
    x, _ = inputs()
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        causal = module(x).float()
    with torch.no_grad():
        q, k, v = module._qkv(x)  # (B, H, T, hd) each, float32
        leaky = module.out_proj(merge_heads(F.scaled_dot_product_attention(q, k, v)))  # sees the future too
    assert relative_error(causal, leaky) > 10 * FORWARD_TOL


# --- SDPA: the kernel each variant relies on ----------------------------------------------------------------
@needs_bf16
@needs_ampere  # flash attention
def test_sdpa_runs_on_the_flash_kernel_in_bf16() -> None:
    """Only FLASH_ATTENTION allowed: the step either runs on it or raises; it cannot fall back to another kernel."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    module = well_scaled("sdpa", d_model=256)  # 4 heads of 64, flash's sweet spot
    x, grad = inputs(d_model=256, t=512)
    with torch.no_grad():
        reference = module(x, return_weights=True)[0]  # the explicit formula, float32
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        out, dx, _ = forward_backward(module, x, grad, bf16=True)
    assert relative_error(out, reference) <= FORWARD_TOL
    assert torch.isfinite(dx).all()


@needs_ampere  # flash attention
def test_flash_alone_refuses_float32_instead_of_falling_back() -> None:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    module = well_scaled("sdpa", d_model=256)
    x, _ = inputs(d_model=256)
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION), torch.no_grad(), pytest.raises(RuntimeError):
        module(x)  # flash has no float32 kernel and no other backend is allowed


MASKED = [  # (variant, position, dense band): SDPA calls that carry a mask, which the efficient kernel takes
    ("sdpa", "alibi", False),  # ALiBi's float bias
    ("gqa", "alibi", False),  # K/V heads repeated on CUDA, so the masked kernel needs no enable_gqa
    ("sliding_window", "none", True),  # blocked = False: the dense (T, T) boolean band
]


@pytest.mark.parametrize(("name", "position", "dense"), MASKED, ids=[f"{n}-{p}" for n, p, _ in MASKED])
def test_the_efficient_kernel_takes_the_masks(name: str, position: str, dense: bool) -> None:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    torch.manual_seed(0)
    module = build_attention(name, D, T, **attention_knobs(name, position=position)).cuda()
    if dense:
        module.blocked = False
    x, grad = inputs(t=256)  # the mask's last dimension a multiple of 16, as the kernel wants it
    with torch.no_grad():
        reference = module(x, return_weights=True)[0]
    with sdpa_kernel(SDPBackend.EFFICIENT_ATTENTION):
        out, dx, _ = forward_backward(module, x, grad, bf16=False)
        if BF16:
            low, _, _ = forward_backward(module, x, grad, bf16=True)
            assert relative_error(low, reference) <= FORWARD_TOL
    torch.testing.assert_close(out, reference, atol=1e-4, rtol=1e-4)
    assert torch.isfinite(dx).all()


# --- FlexAttention: sliding_window's band kernel on CUDA ----------------------------------------------------
@needs_ampere  # FlexAttention (and bfloat16)
def test_sliding_window_uses_flex_attention_without_falling_back(caplog: pytest.LogCaptureFixture) -> None:
    from attention_lab.attention.local import flex_available

    module = build_attention("sliding_window", 256, 1024, num_heads=4, window=128, dropout=0.0).cuda()
    x, grad = inputs(d_model=256, t=1024)  # 8 windows: the band kernel, not the plain causal path
    with caplog.at_level(logging.WARNING, logger="attention_lab"):
        out, dx, _ = forward_backward(module, x, grad, bf16=True)  # as bf16-mixed training runs it
    ours = [r.getMessage() for r in caplog.records if r.name.startswith("attention_lab")]
    assert not [m for m in ours if "FlexAttention" in m], f"FlexAttention failed, the blocked kernel ran: {ours}"
    q = torch.empty(1, device="cuda")
    assert flex_available(q), "FlexAttention was switched off for this process"
    with torch.no_grad():
        reference = module(x, return_weights=True)[0]
    assert relative_error(out, reference) <= FORWARD_TOL
    assert torch.isfinite(dx).all()


# --- DDP on two GPUs --------------------------------------------------------------------------------------
@pytest.mark.slow
@needs_bf16
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs")
@pytest.mark.parametrize("strategy", ["ddp_spawn", "ddp"])
def test_ddp_on_two_gpus_trains_one_run(tmp_path: Path, strategy: str) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(CORPUS)
    overrides = [o for o in tiny(corpus=corpus) if not o.startswith("trainer.accelerator")]
    result = run_script(
        [
            *overrides,
            f"trainer={strategy}",
            "trainer.accelerator=gpu",
            "trainer.devices=2",
            "trainer.precision=bf16-mixed",
            "trainer.max_steps=6",
            "trainer.val_check_interval=3",
            *LEAN_CALLBACKS,
        ],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = run_folders(tmp_path / "outputs")
    metrics = read_metrics(run)
    assert metrics["status"] == "ok" and metrics["global_step"] == 6
    assert metrics["tokens_seen"] == 6 * 4 * 32 * 2  # two ranks, each its own shard
    assert metrics["device"].startswith("cuda")
