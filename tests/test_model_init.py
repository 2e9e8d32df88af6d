"""`model.init`, `model.mlp_ratio` and `model.mlp_hidden`: the two initialisations give the statistics they
promise, seeded per name (init_seed, see test_common_random_numbers.py) or not, and the MLP width follows the
ratio or the explicit width (parameter counts included)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from attention_lab.model import GPT, name_seed

ATTENTION = {"name": "multihead", "num_heads": 4, "dropout": 0.0}


def gpt(**kwargs) -> GPT:
    torch.manual_seed(0)
    settings = {"vocab_size": 500, "context_length": 64, "d_model": 128, "n_layers": 2, "attention": ATTENTION}
    return GPT(**{**settings, "tie_weights": False, **kwargs})


SEEDS = [None, 7]  # the global stream (GPT built directly), or every parameter seeded by its name (training)


@pytest.mark.parametrize("init_seed", SEEDS)
def test_torch_default_keeps_pytorchs_own_initialisation(init_seed: int | None) -> None:
    """Kaiming-uniform linears (weights and biases within 1/sqrt(fan_in), the uniform's std), N(0, 1) embeddings,
    LayerNorm weight 1 and bias 0: what each module's reset_parameters gives, untouched by the GPT."""
    model = gpt(init="torch_default", init_seed=init_seed)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert linears
    for linear in linears:
        bound = 1 / math.sqrt(linear.in_features)
        assert linear.weight.abs().max() <= bound
        assert linear.weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.1)
        if linear.bias is not None:
            assert linear.bias.abs().max() <= bound and linear.bias.abs().max() > bound / 4
    for embedding in (model.tok_emb, model.pos_emb):
        assert embedding.weight.std().item() == pytest.approx(1.0, rel=0.05)
        assert abs(embedding.weight.mean().item()) < 0.05
    for norm in (m for m in model.modules() if isinstance(m, nn.LayerNorm)):
        assert torch.equal(norm.weight, torch.ones_like(norm.weight)) and torch.equal(
            norm.bias, torch.zeros_like(norm.bias)
        )


def test_torch_default_is_exactly_what_construction_draws() -> None:
    """Same seed, same construction: torch_default changes nothing after the modules are built, so an embedding
    built alone from the same random stream is the model's first table, bit for bit."""
    model = gpt(init="torch_default")
    torch.manual_seed(0)
    assert torch.equal(model.tok_emb.weight, nn.Embedding(500, 128).weight)


def test_seeded_torch_default_is_exactly_reset_parameters_under_the_modules_seed() -> None:
    """Not merely the same statistics: the very numbers nn.Embedding's own init draws from that seed."""
    model = gpt(init="torch_default", init_seed=7)
    torch.manual_seed(name_seed(7, "tok_emb"))
    assert torch.equal(model.tok_emb.weight, nn.Embedding(500, 128).weight)
    torch.manual_seed(name_seed(7, "blocks.1.mlp.fc"))
    assert torch.equal(model.blocks[1].mlp.fc.weight, nn.Linear(128, 512).weight)


@pytest.mark.parametrize("init_seed", SEEDS)
def test_gpt2_init_is_std_002_with_scaled_residual_projections(init_seed: int | None) -> None:
    model = gpt(init="gpt2", init_seed=init_seed)
    assert model.tok_emb.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert model.blocks[0].mlp.fc.weight.std().item() == pytest.approx(0.02, rel=0.05)
    residual = 0.02 / math.sqrt(2 * 2)
    assert model.blocks[0].mlp.proj.weight.std().item() == pytest.approx(residual, rel=0.05)
    assert torch.equal(model.blocks[0].mlp.fc.bias, torch.zeros_like(model.blocks[0].mlp.fc.bias))
    assert model.blocks[1].attn.out_proj.weight.std().item() == pytest.approx(residual, rel=0.05)
    assert torch.equal(model.blocks[1].attn.out_proj.bias, torch.zeros_like(model.blocks[1].attn.out_proj.bias))
    assert torch.equal(model.final_norm.weight, torch.ones(128)) and torch.equal(
        model.final_norm.bias, torch.zeros(128)
    )


@pytest.mark.parametrize(("init", "low", "high", "std"), [("torch_default", 0.0, 1.0, 12**-0.5), ("gpt2", -1, 1, 0.02)])
def test_raw_parameter_projections_keep_their_init_when_seeded(init: str, low: float, high: float, std: float) -> None:
    """SelfAttentionV1's raw W_query/W_key/W_value (no reset_parameters): the chapter's torch.rand, uniform [0, 1),
    under torch_default; N(0, 0.02) like every linear under gpt2. Each matrix has numbers of its own."""
    model = gpt(init=init, init_seed=7, attention={"name": "self_attention_v1"})
    attn = model.blocks[0].attn
    for weight in (attn.W_query, attn.W_key, attn.W_value):
        assert low <= weight.min().item() and weight.max().item() < high
        assert weight.std().item() == pytest.approx(std, rel=0.05)
    assert not torch.equal(attn.W_query, attn.W_key)


def test_an_unknown_init_is_refused() -> None:
    with pytest.raises(ValueError, match=r"gpt2, torch_default"):
        gpt(init="xavier")


@pytest.mark.parametrize("ratio", [1, 2, 4, 8])
def test_the_mlp_width_follows_mlp_ratio(ratio: int) -> None:
    model = gpt(mlp_ratio=ratio)
    assert model.blocks[0].mlp.fc.out_features == ratio * 128 == model.blocks[1].mlp.proj.in_features
    mlp_params = 2 * (128 * ratio * 128) + ratio * 128 + 128  # fc and proj weights, their biases
    assert sum(p.numel() for p in model.blocks[0].mlp.parameters()) == mlp_params
    default = gpt()
    difference = default.num_params()["non_embedding"] - model.num_params()["non_embedding"]
    assert difference == 2 * (sum(p.numel() for p in default.blocks[0].mlp.parameters()) - mlp_params)


def test_mlp_hidden_sets_the_width_itself_and_wins_over_the_ratio() -> None:
    """Any width (match_params picks ones that are no multiple of d_model): each unit adds 2 d_model + 1 per layer."""
    model = gpt(mlp_ratio=8, mlp_hidden=300)
    assert model.blocks[0].mlp.fc.out_features == 300 == model.blocks[1].mlp.proj.in_features
    one_more = gpt(mlp_hidden=301).num_params()["non_embedding"] - model.num_params()["non_embedding"]
    assert one_more == 2 * (2 * 128 + 1)
