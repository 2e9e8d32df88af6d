"""The chapter's classic sequence: its printed numbers under its seeds, its signatures and parameter order."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from attention_lab.attention import (
    AttentionConfigError,
    CausalAttention,
    MultiHeadAttention,
    MultiHeadAttentionWrapper,
    SelfAttentionV1,
    SelfAttentionV2,
    SimplifiedSelfAttention,
    count_params,
    simplified_self_attention,
)

ATOL = 1e-4


def assert_close(actual: torch.Tensor, expected: list[list[float]], atol: float = ATOL) -> None:
    torch.testing.assert_close(actual.detach(), torch.tensor(expected), atol=atol, rtol=0)


# --- the chapter's printed numbers -------------------------------------------------------------------------
def test_simplified_self_attention_matches_chapter(inputs: torch.Tensor) -> None:
    expected = [
        [0.4421, 0.5931, 0.5790],
        [0.4419, 0.6515, 0.5683],
        [0.4431, 0.6496, 0.5671],
        [0.4304, 0.6298, 0.5510],
        [0.4671, 0.5910, 0.5266],
        [0.4177, 0.6503, 0.5645],
    ]
    assert_close(simplified_self_attention(inputs), expected)
    assert_close(SimplifiedSelfAttention()(inputs), expected)


def test_self_attention_v1_matches_chapter(inputs: torch.Tensor) -> None:
    torch.manual_seed(123)
    sa_v1 = SelfAttentionV1(3, 2)
    expected = [
        [0.2996, 0.8053],
        [0.3061, 0.8210],
        [0.3058, 0.8203],
        [0.2948, 0.7939],
        [0.2927, 0.7891],
        [0.2990, 0.8040],
    ]
    assert_close(sa_v1(inputs), expected)


def test_self_attention_v2_matches_chapter(inputs: torch.Tensor) -> None:
    torch.manual_seed(789)
    sa_v2 = SelfAttentionV2(3, 2)
    expected = [
        [-0.0739, 0.0713],
        [-0.0748, 0.0703],
        [-0.0749, 0.0702],
        [-0.0760, 0.0685],
        [-0.0763, 0.0679],
        [-0.0754, 0.0693],
    ]
    assert_close(sa_v2(inputs), expected)


CAUSAL_EXPECTED = [
    [-0.4519, 0.2216],
    [-0.5874, 0.0058],
    [-0.6300, -0.0632],
    [-0.5675, -0.0843],
    [-0.5526, -0.0981],
    [-0.5299, -0.1081],
]


def test_causal_attention_matches_chapter(batch: torch.Tensor) -> None:
    torch.manual_seed(123)
    ca = CausalAttention(3, 2, batch.shape[1], 0.0)
    context_vecs = ca(batch)
    assert context_vecs.shape == (2, 6, 2)
    assert_close(context_vecs[0], CAUSAL_EXPECTED)
    assert_close(context_vecs[1], CAUSAL_EXPECTED)


def test_multihead_wrapper_matches_chapter(batch: torch.Tensor) -> None:
    torch.manual_seed(123)
    mha = MultiHeadAttentionWrapper(3, 2, batch.shape[1], 0.0, num_heads=2)
    context_vecs = mha(batch)
    assert context_vecs.shape == (2, 6, 4)
    expected = [
        [-0.4519, 0.2216, 0.4772, 0.1063],
        [-0.5874, 0.0058, 0.5891, 0.3257],
        [-0.6300, -0.0632, 0.6202, 0.3860],
        [-0.5675, -0.0843, 0.5478, 0.3589],
        [-0.5526, -0.0981, 0.5321, 0.3428],
        [-0.5299, -0.1081, 0.5077, 0.3493],
    ]
    assert_close(context_vecs[0], expected)


def test_multihead_attention_matches_chapter(batch: torch.Tensor) -> None:
    torch.manual_seed(123)
    mha = MultiHeadAttention(3, 2, batch.shape[1], 0.0, num_heads=2)
    context_vecs = mha(batch)
    assert context_vecs.shape == (2, 6, 2)
    expected = [
        [0.3190, 0.4858],
        [0.2943, 0.3897],
        [0.2856, 0.3593],
        [0.2693, 0.3873],
        [0.2639, 0.3928],
        [0.2575, 0.4028],
    ]
    assert_close(context_vecs[0], expected)


# --- signatures and parameter creation order ---------------------------------------------------------------
@pytest.mark.parametrize(
    ("factory", "names"),
    [
        (lambda: SelfAttentionV1(3, 2), ["W_query", "W_key", "W_value"]),
        (lambda: SelfAttentionV2(3, 2), ["W_query.weight", "W_key.weight", "W_value.weight"]),
        (
            lambda: SelfAttentionV2(3, 2, qkv_bias=True),
            ["W_query.weight", "W_query.bias", "W_key.weight", "W_key.bias", "W_value.weight", "W_value.bias"],
        ),
        (lambda: CausalAttention(3, 2, 6, 0.0), ["W_query.weight", "W_key.weight", "W_value.weight"]),
        (
            lambda: MultiHeadAttention(3, 2, 6, 0.0, num_heads=2),
            ["W_query.weight", "W_key.weight", "W_value.weight", "out_proj.weight", "out_proj.bias"],
        ),
        (
            lambda: MultiHeadAttentionWrapper(3, 2, 6, 0.0, num_heads=2),
            [f"heads.{i}.{w}.weight" for i in range(2) for w in ("W_query", "W_key", "W_value")],
        ),
        (lambda: SimplifiedSelfAttention(), []),
    ],
    ids=["v1", "v2", "v2_bias", "causal", "multihead", "wrapper", "simplified"],
)
def test_parameter_creation_order(factory, names: list[str]) -> None:
    assert [name for name, _ in factory().named_parameters()] == names


def test_self_attention_v1_parameters_are_uniform_rand(inputs: torch.Tensor) -> None:
    torch.manual_seed(123)
    sa_v1 = SelfAttentionV1(3, 2)
    torch.manual_seed(123)
    expected = [torch.rand(3, 2) for _ in range(3)]
    for param, want in zip((sa_v1.W_query, sa_v1.W_key, sa_v1.W_value), expected, strict=True):
        assert param.shape == (3, 2)
        torch.testing.assert_close(param.detach(), want)


def test_v1_and_v2_compute_the_same_map(inputs: torch.Tensor) -> None:
    """The chapter's exercise: V1 with V2's (transposed) weights gives V2's output."""
    sa_v2 = SelfAttentionV2(3, 2)
    sa_v1 = SelfAttentionV1(3, 2)
    with torch.no_grad():
        sa_v1.W_query.copy_(sa_v2.W_query.weight.T)
        sa_v1.W_key.copy_(sa_v2.W_key.weight.T)
        sa_v1.W_value.copy_(sa_v2.W_value.weight.T)
    torch.testing.assert_close(sa_v1(inputs), sa_v2(inputs))


def test_gpt2_sized_multihead_parameter_count() -> None:
    with torch.device("meta"):
        mha = MultiHeadAttention(768, 768, 1024, 0.0, num_heads=12)
    assert count_params(mha) == 2_360_064


def test_multihead_rejects_indivisible_width() -> None:
    with pytest.raises(AttentionConfigError, match=r"d_out=2 is not divisible by num_heads=3.*num_heads to a divisor"):
        MultiHeadAttention(3, 2, 6, 0.0, num_heads=3)


def test_the_causal_mask_is_built_per_length_not_sized_up_front() -> None:
    """No (T, T) buffer: a module built for 6 tokens runs on 24 and stays causal there."""
    mha = MultiHeadAttention(3, 2, 6, 0.0, num_heads=2).eval()
    assert dict(mha.named_buffers()) == {}
    assert set(mha.state_dict()) == {
        "W_query.weight",
        "W_key.weight",
        "W_value.weight",
        "out_proj.weight",
        "out_proj.bias",
    }
    x = torch.randn(1, 24, 3)
    with torch.no_grad():
        out, weights = mha(x, return_weights=True)
        changed = mha(torch.cat((x[:, :12], torch.randn(1, 12, 3)), dim=1))
    assert weights.shape == (1, 2, 24, 24)
    assert torch.all(weights.triu(diagonal=1) == 0)
    torch.testing.assert_close(changed[:, :12], out[:, :12])


# --- unbatched (T, d_in) and batched (B, T, d_in) inputs ---------------------------------------------------
CLASSIC_MODULES = {
    "simplified": lambda: SimplifiedSelfAttention(),
    "simplified_causal": lambda: SimplifiedSelfAttention(causal=True, context_length=6),
    "v1": lambda: SelfAttentionV1(3, 2),
    "v2": lambda: SelfAttentionV2(3, 2),
    "causal": lambda: CausalAttention(3, 2, 6, 0.0),
    "wrapper": lambda: MultiHeadAttentionWrapper(3, 2, 6, 0.0, num_heads=2),
    "multihead": lambda: MultiHeadAttention(3, 2, 6, 0.0, num_heads=2),
}
CLASSIC_OUT = {"simplified": 3, "simplified_causal": 3, "wrapper": 4}
CLASSIC_HEADS = {"wrapper": 2, "multihead": 2}


@pytest.mark.parametrize("kind", sorted(CLASSIC_MODULES))
def test_classic_accepts_unbatched_and_batched(kind: str, inputs: torch.Tensor) -> None:
    module = CLASSIC_MODULES[kind]().eval()
    other = torch.rand(6, 3)
    d_out, heads = CLASSIC_OUT.get(kind, 2), CLASSIC_HEADS.get(kind, 1)

    single, single_weights = module(inputs, return_weights=True)
    assert single.shape == (6, d_out)
    assert single_weights.shape == (heads, 6, 6)

    batched, batched_weights = module(torch.stack((inputs, other)), return_weights=True)
    assert batched.shape == (2, 6, d_out)
    assert batched_weights.shape == (2, heads, 6, 6)
    torch.testing.assert_close(batched[0], single)
    torch.testing.assert_close(batched[1], module(other))
    torch.testing.assert_close(batched_weights[0], single_weights)
    torch.testing.assert_close(batched_weights.sum(-1), torch.ones(2, heads, 6))


def test_classic_causal_modules_zero_the_future(batch: torch.Tensor) -> None:
    torch.manual_seed(123)
    _, weights = CausalAttention(3, 2, 6, 0.0)(batch, return_weights=True)
    assert torch.equal(weights.triu(1), torch.zeros_like(weights))
    lower = torch.ones(6, 6, dtype=torch.bool).tril()
    assert (weights[..., lower] > 0).all()


def test_v1_v2_are_not_causal_by_default(inputs: torch.Tensor) -> None:
    _, weights = SelfAttentionV2(3, 2)(inputs, return_weights=True)
    assert (weights > 0).all()


def test_classic_dropout_only_in_training(batch: torch.Tensor) -> None:
    ca = CausalAttention(3, 2, 6, 0.5)
    ca.train()
    assert not torch.equal(ca(batch), ca(batch))
    ca.eval()
    torch.testing.assert_close(ca(batch), ca(batch), atol=0, rtol=0)


@pytest.mark.slow  # a fresh interpreter importing torch: ~2 s
def test_chapter_import_line_works_in_a_fresh_interpreter() -> None:
    """`from attention_lab.attention import MultiHeadAttention` works, and pulls in neither Lightning nor Hydra."""
    code = (
        "import sys\n"
        "from attention_lab.attention import MultiHeadAttention\n"
        "import attention_lab.model\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in {'lightning', 'pytorch_lightning', 'hydra'})\n"
        "assert not bad, bad\n"
        "print(MultiHeadAttention.__name__)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "MultiHeadAttention"
