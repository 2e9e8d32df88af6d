"""Position schemes on CUDA: the same numbers as on the CPU, SDPA's float-mask path, bf16, long sequences.

Skipped without CUDA (CI has none); `make gpu-check`-style runs on a lent GPU save their output under
benchmarks/results/gpu/.
"""

from __future__ import annotations

import pytest
import torch

from attention_lab.attention import available, build_attention, get_variant
from attention_lab.model import GPT
from attention_lab.sampling import generate
from tests.helpers import D_MODEL, attention_knobs

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]
PAIRS = [(name, scheme) for name in available() for scheme in get_variant(name).positions]
# self_attention_v1's raw torch.rand weights (the chapter's) saturate the softmax at d_model=32, so bfloat16
# rounding of a near-tie moves whole rows; the GPT re-initialises them (std 0.02). Its float32 tests still run.
BF16_PAIRS = [(n, s) for n, s in PAIRS if s in ("rope", "alibi") and n != "self_attention_v1"]
SEQ = 300  # several of linear's 64-token chunks, and past the 16-token training context


def pair(name: str, scheme: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_attention(name, D_MODEL, 16, position=scheme, **attention_knobs(name)).eval()


@pytest.mark.parametrize(("name", "scheme"), PAIRS)
def test_cuda_float32_equals_cpu(name: str, scheme: str) -> None:
    module = pair(name, scheme)
    x = torch.randn(2, SEQ, D_MODEL)
    with torch.no_grad():
        on_cpu = module(x)
        on_gpu = module.cuda()(x.cuda()).cpu()
    torch.testing.assert_close(on_gpu, on_cpu, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", ["sdpa", "gqa", "sliding_window", "latent"])
@pytest.mark.parametrize("scheme", ["rope", "alibi"])
def test_cuda_sdpa_path_equals_the_explicit_formula(name: str, scheme: str) -> None:
    module = pair(name, scheme).cuda()
    x = torch.randn(2, SEQ, D_MODEL, device="cuda")
    with torch.no_grad():
        fused = module(x)
        explicit, _ = module(x, return_weights=True)
    torch.testing.assert_close(fused, explicit, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(("name", "scheme"), BF16_PAIRS)
def test_bf16_autocast_stays_close_to_float32(name: str, scheme: str) -> None:
    module = pair(name, scheme).cuda()
    x = torch.randn(2, SEQ, D_MODEL, device="cuda")
    with torch.no_grad():
        reference = module(x)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            low = module(x).float()
    scale = reference.abs().max().item()
    assert (low - reference).abs().max().item() <= 0.05 * scale + 1e-3


@pytest.mark.parametrize(("name", "scheme"), BF16_PAIRS)
def test_bf16_weights_run_and_stay_close_to_float32(name: str, scheme: str) -> None:
    """trainer.precision=bf16-true: bfloat16 weights and activations (ALiBi's float mask must follow)."""
    module = pair(name, scheme).cuda()
    x = torch.randn(2, SEQ, D_MODEL, device="cuda")
    with torch.no_grad():
        reference = module(x)
        low = module.to(torch.bfloat16)(x.to(torch.bfloat16)).float()
    scale = reference.abs().max().item()
    assert (low - reference).abs().max().item() <= 0.05 * scale + 1e-3


@pytest.mark.parametrize("scheme", ["rope", "alibi", "none"])
def test_cached_generation_past_the_context_on_cuda(scheme: str) -> None:
    torch.manual_seed(0)
    attention = {"name": "sdpa", "num_heads": 4, "dropout": 0.0}
    model = GPT(50, 16, D_MODEL, 2, attention, emb_dropout=0.0, resid_dropout=0.0, position=scheme).cuda().eval()
    idx = torch.randint(0, 50, (2, 3), device="cuda")
    cached = generate(model, idx, 60, use_cache=True)
    uncached = generate(model, idx, 60, use_cache=False)
    assert cached.shape == (2, 63)
    assert torch.equal(cached, uncached)
