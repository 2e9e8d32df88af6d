"""Common random numbers: with the same seed, two attention variants start with bit-identical shared weights
(embeddings, norms, MLPs, head) and see the same batches in the same order, so a paired comparison measures the
attention and not the luck of the draw. Every parameter is seeded by (seed, its name), not by its place in one
global stream that the attention modules built before it would shift."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch

from attention_lab.attention import available
from attention_lab.model import GPT, INITS, name_seed
from attention_lab.training.task import train
from tests.helpers import attention_knobs, one_torch_thread
from tests.training.helpers import CORPUS, LEAN_CALLBACKS, add_callback, make_cfg, tiny

N_LAYERS = 2
VARIANTS = ("multihead", "gqa", "linear", "self_attention_v1")  # three layouts of Q/K/V, one of raw parameters


def gpt(name: str, seed: int | None = 0, stream: int = 0, **kwargs: Any) -> GPT:
    """A tiny GPT seeded with `seed`, built after the global stream was put at `stream` (which it must not use)."""
    torch.manual_seed(stream)
    attention = {"name": name, **attention_knobs(name)}
    settings = {"vocab_size": 40, "context_length": 16, "d_model": 32, "n_layers": N_LAYERS, "attention": attention}
    return GPT(**{**settings, **kwargs}, init_seed=seed)


def shared_expected(tied: bool) -> set[str]:
    """Every non-attention tensor of the tiny GPT, by name: what must be common to all variants."""
    names = {"tok_emb.weight", "pos_emb.weight", "final_norm.weight", "final_norm.bias"}
    for i in range(N_LAYERS):
        for part in ("norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias"):
            names.add(f"blocks.{i}.{part}")
        for part in ("fc.weight", "fc.bias", "proj.weight", "proj.bias"):
            names.add(f"blocks.{i}.mlp.{part}")
    return names if tied else names | {"head.weight"}


def shared(model: GPT) -> dict[str, torch.Tensor]:
    return {name: p for name, p in model.named_parameters() if ".attn." not in name}


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("init", INITS)
def test_variants_with_the_same_seed_share_their_common_weights_bit_for_bit(init: str, tied: bool) -> None:
    # each variant built from another global-stream state, and their attention draws different amounts
    models = [gpt(name, seed=5, stream=i, init=init, tie_weights=tied) for i, name in enumerate(VARIANTS)]
    reference = shared(models[0])
    assert set(reference) == shared_expected(tied)
    for name, model in zip(VARIANTS[1:], models[1:], strict=True):
        common = shared(model)
        assert set(common) == set(reference), name
        different = [key for key in reference if not torch.equal(reference[key], common[key])]
        assert different == [], f"{name} vs {VARIANTS[0]} ({init}): {different}"
    if tied:
        assert models[1].head.weight is models[1].tok_emb.weight
    # and the random ones are random (not a constant that would be trivially equal)
    assert reference["blocks.0.mlp.fc.weight"].std() > 0 and reference["tok_emb.weight"].std() > 0


def test_control_without_init_seed_the_attention_shifts_the_shared_weights() -> None:
    """What the seeding fixes: from one global stream, gqa's smaller K/V projections leave other numbers for
    every weight drawn after them: the next MLP, and with GPT-2's init (a second pass after construction) even
    the token embedding."""
    multihead, gqa = shared(gpt("multihead", seed=None)), shared(gpt("gqa", seed=None))
    for key in ("blocks.0.mlp.fc.weight", "tok_emb.weight"):
        assert not torch.equal(multihead[key], gqa[key]), key


@pytest.mark.parametrize("init", INITS)
def test_a_different_seed_gives_different_weights(init: str) -> None:
    first, second = shared(gpt("multihead", seed=0, init=init)), shared(gpt("multihead", seed=1, init=init))
    for key in ("tok_emb.weight", "pos_emb.weight", "blocks.0.mlp.fc.weight", "blocks.1.mlp.proj.weight"):
        assert not torch.equal(first[key], second[key]), key
    assert torch.equal(first["blocks.0.norm1.weight"], second["blocks.0.norm1.weight"])  # LayerNorm: always 1


@pytest.mark.slow  # ~0.5 s: keeps the quick run under a minute; CI runs it
@pytest.mark.parametrize("init", INITS)
def test_the_same_seed_twice_gives_every_variant_identical_weights(init: str) -> None:
    """All of them, attention included, whatever the global stream held: no parameter of any variant is drawn
    from the global stream (a new variant with an unseeded parameter fails here)."""
    for name in available():
        first, second = gpt(name, seed=3, stream=0, init=init), gpt(name, seed=3, stream=1, init=init)
        for (key, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items(), strict=True):
            assert torch.equal(a, b), f"{name}: {key}"


def test_equal_names_get_equal_numbers_and_other_shapes_do_not() -> None:
    """multihead's three (d, d) Q/K/V matrices and sdpa's one (3d, d) `qkv` no longer come from the same stretch
    of one stream, so they differ; the out_proj both have, by the same name and shape, is identical."""
    multihead, sdpa = gpt("multihead"), gpt("sdpa")
    assert torch.equal(multihead.blocks[0].attn.out_proj.weight, sdpa.blocks[0].attn.out_proj.weight)
    stacked = torch.cat([multihead.blocks[0].attn.W_query.weight, multihead.blocks[0].attn.W_key.weight])
    assert not torch.equal(stacked, sdpa.blocks[0].attn.qkv.weight[: 2 * 32])


def test_building_a_seeded_model_leaves_the_global_stream_where_it_was() -> None:
    torch.manual_seed(11)
    before = torch.get_rng_state()
    gpt("gqa", seed=0, stream=11, init="torch_default")
    assert torch.equal(torch.get_rng_state(), before), "dropout would start elsewhere for every variant"
    gpt("gqa", seed=None, stream=11)
    assert not torch.equal(torch.get_rng_state(), before), "control: unseeded construction draws from it"


def test_name_seed_is_stable_and_separates_names_and_seeds() -> None:
    """A stable hash: these values are the same in every process (Python's salted hash() would not be)."""
    assert name_seed(0, "tok_emb.weight") == name_seed(0, "tok_emb.weight") < 2**63
    seeds = {name_seed(s, n) for s in (0, 1, 1337) for n in ("tok_emb.weight", "pos_emb.weight", "blocks.0.mlp.fc")}
    assert len(seeds) == 9
    assert name_seed(0, "blocks.1.mlp.fc") == 3336039644023757817  # pinned: a change re-draws every run


# ------------------------------------------------------------------------------------------------ the task
FIRST_STEPS: dict[str, dict[str, Any]] = {}


class FirstStep(L.Callback):
    """Records in FIRST_STEPS what step 0 starts from: the batch, the shared weights, the global random state."""

    def __init__(self, key: str) -> None:
        self.key = key

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, idx: int) -> None:
        if trainer.global_step == 0:
            weights = {k: v.detach().clone() for k, v in shared(pl_module.model).items()}
            FIRST_STEPS[self.key] = {"batch": batch, "weights": weights, "rng": torch.get_rng_state()}


@pytest.mark.slow  # ~0.5 s: keeps the quick run under a minute; CI runs it
def test_two_variants_trained_with_the_same_seed_start_from_the_same_weights_batch_and_stream(tmp_path: Path) -> None:
    """Through the training task: multihead and gqa with seed=7 see the same first batch, start from the same
    shared weights and the same global random state; seed=8 changes the weights (the batch order too).
    model.init=torch_default: the init whose construction draws from the global stream (gpt2 is covered above)."""
    init = "torch_default"
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(CORPUS)
    FIRST_STEPS.clear()
    runs = [("multihead", 7), ("gqa", 7), ("multihead", 8)]
    with one_torch_thread():
        for name, seed in runs:
            key = f"{name}-{seed}"
            overrides = [f"attention={name}", *tiny(name, corpus), *LEAN_CALLBACKS, f"model.init={init}"]
            overrides += [f"seed={seed}", "trainer.max_steps=1", "trainer.num_sanity_val_steps=0", "logger=csv"]
            cfg = make_cfg(tmp_path / key, overrides)
            add_callback(cfg, "first_step", FirstStep, key=key)
            assert train(cfg)["status"] == "ok"
    a, b, other = (FIRST_STEPS[f"{name}-{seed}"] for name, seed in runs)
    assert all(torch.equal(x, y) for x, y in zip(a["batch"], b["batch"], strict=True))
    assert set(a["weights"]) == shared_expected(tied=True)
    assert all(torch.equal(a["weights"][k], b["weights"][k]) for k in a["weights"])
    assert torch.equal(a["rng"], b["rng"])
    assert not torch.equal(a["weights"]["tok_emb.weight"], other["weights"]["tok_emb.weight"])
    assert not torch.equal(a["batch"][0], other["batch"][0])
