"""Mechanism telemetry: the four scores on hand-made attention maps with known answers, the probe, the callback
on stubs (threshold crossing, "never", no validation, resume state) and in a tiny real training run."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch import nn

from attention_lab.attention import available
from attention_lab.model import GPT
from attention_lab.training.task import train
from attention_lab.training.telemetry import (
    INDUCTION_THRESHOLD,
    MechanismTelemetry,
    induction_probe,
    induction_score,
    mean_distance,
    mechanism_scores,
    prev_token_score,
    probe_half_length,
    scalar_tags,
    sink_mass,
)
from tests.helpers import attention_knobs
from tests.training.helpers import LEAN_CALLBACKS, make_cfg, read_events, read_metrics, tiny

L_HALF = 4
T = 2 * L_HALF


# ----------------------------------------------------------------------------------------- hand-made maps
def one_hot_map(key_of: list[int]) -> torch.Tensor:
    """(1, 1, T, T): query i puts all its weight on key key_of[i]."""
    w = torch.zeros(1, 1, len(key_of), len(key_of))
    w[0, 0, torch.arange(len(key_of)), torch.tensor(key_of)] = 1.0
    return w


def induction_map() -> torch.Tensor:
    """First half attends to itself, second half (query L+j) to key j+1: a perfect induction head."""
    return one_hot_map([i if i < L_HALF else i - L_HALF + 1 for i in range(T)])


def prev_token_map() -> torch.Tensor:
    return one_hot_map([max(i - 1, 0) for i in range(T)])


def uniform_causal_map(t: int = T) -> torch.Tensor:
    return torch.tril(torch.ones(t, t)) / torch.arange(1, t + 1)[:, None]  # row i: 1/(i+1) on keys 0..i


def test_a_perfect_induction_head_scores_one() -> None:
    w = induction_map()
    assert induction_score(w).tolist() == [1.0]
    assert prev_token_score(w).tolist() == [0.0]  # L > 2: key j+1 is never the previous position L+j-1


def test_a_previous_token_head_scores_one_and_no_induction() -> None:
    w = prev_token_map()
    assert prev_token_score(w).tolist() == [1.0]
    assert induction_score(w).tolist() == [0.0]
    assert mean_distance(w).item() == pytest.approx((T - 1) / T)  # distance 1 everywhere but query 0
    assert sink_mass(w).item() == pytest.approx(1 / (T - 1))  # only query 1's previous token is key 0


def test_uniform_causal_map_matches_the_closed_forms() -> None:
    w = uniform_causal_map()[None, None]  # (1, 1, T, T)
    harmonic = sum(1 / (i + 1) for i in range(1, T)) / (T - 1)  # mean over i >= 1 of 1/(i+1)
    assert induction_score(w).item() == pytest.approx(sum(1 / (L_HALF + j + 1) for j in range(L_HALF - 1)) / 3)
    assert prev_token_score(w).item() == pytest.approx(harmonic)
    assert sink_mass(w).item() == pytest.approx(harmonic)
    assert mean_distance(w).item() == pytest.approx((T - 1) / 4)  # row i: mean of 0..i is i/2


def test_a_sink_head_puts_its_mass_on_position_zero() -> None:
    w = one_hot_map([0] * T)
    assert sink_mass(w).tolist() == [1.0]
    assert mean_distance(w).item() == pytest.approx((T - 1) / 2)


def test_scores_are_per_head_and_averaged_over_the_batch() -> None:
    heads = torch.cat([induction_map(), prev_token_map()], dim=1)  # (1, 2, T, T)
    batch = torch.cat([heads, prev_token_map().expand(1, 2, T, T)])  # 2nd sequence: both heads previous-token
    assert induction_score(heads).tolist() == [1.0, 0.0]
    assert induction_score(batch).tolist() == [0.5, 0.0]
    assert prev_token_score(batch).tolist() == [0.5, 1.0]


def test_a_probe_too_short_for_induction_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 2x2"):
        induction_score(torch.ones(1, 1, 2, 2))


# ------------------------------------------------------------------------------------------------- probe
def test_the_probe_is_deterministic_and_its_second_half_repeats_the_first() -> None:
    probe = induction_probe(vocab_size=50, half_length=16, sequences=4, seed=0)
    assert probe.shape == (4, 32) and int(probe.max()) < 50 and int(probe.min()) >= 0
    assert torch.equal(probe[:, :16], probe[:, 16:])
    assert all(len(set(row[:16].tolist())) == 16 for row in probe), "distinct ids: one previous occurrence each"
    assert torch.equal(probe, induction_probe(50, 16, 4, seed=0))
    assert not torch.equal(probe, induction_probe(50, 16, 4, seed=1))
    assert len({tuple(row.tolist()) for row in probe}) == 4, "the sequences differ"


def test_a_vocabulary_smaller_than_a_half_still_repeats() -> None:
    probe = induction_probe(vocab_size=3, half_length=8, sequences=2)
    assert torch.equal(probe[:, :8], probe[:, 8:]) and int(probe.max()) < 3


def test_half_length_fits_the_context() -> None:
    assert probe_half_length(1024) == 32 and probe_half_length(20) == 10 and probe_half_length(3) == 1


# ------------------------------------------------------------------------------------- every variant
@pytest.mark.parametrize("name", available())
def test_every_variant_gives_scores_per_layer_and_head(name: str) -> None:
    torch.manual_seed(0)
    knobs = attention_knobs(name)
    knobs.update({"dropout": 0.5} if "dropout" in knobs else {})  # must not act: the probe runs in eval mode
    attention = {"name": name, **knobs}
    model = GPT(vocab_size=40, context_length=16, d_model=32, n_layers=2, attention=attention, emb_dropout=0.5)
    telemetry = MechanismTelemetry(sequences=2)
    scores = telemetry.measure(model.train())
    assert model.training, "train mode is restored after the probe"
    again = telemetry.measure(model)
    assert all(torch.equal(scores[k], again[k]) for k in scores), "no dropout: the same scores twice"
    heads = attention.get("num_heads", 1)
    assert {k: tuple(v.shape) for k, v in scores.items()} == dict.fromkeys(scores, (2, heads))
    for key in ("induction", "prev_token", "sink_mass"):
        assert ((scores[key] >= 0) & (scores[key] <= 1 + 1e-5)).all(), key
    t = 2 * probe_half_length(16)
    limit = attention.get("window", t) - 1  # sliding_window: no weight beyond the band
    assert ((scores["distance"] >= 0) & (scores["distance"] <= limit + 1e-4)).all()


# ------------------------------------------------------------------------------------ callback on stubs
class FixedMapModel(nn.Module):
    """A stand-in GPT whose every layer returns the same map for any input."""

    def __init__(self, weights: torch.Tensor, context_length: int = T, n_layers: int = 2):
        super().__init__()
        self.context_length, self.vocab_size, self.n_layers = context_length, 20, n_layers
        self.weights = weights
        self.scale = nn.Parameter(torch.ones(1))  # finite_weights looks at the parameters

    def forward(self, idx: torch.Tensor, return_weights: bool = False) -> Any:
        assert not self.training and not torch.is_grad_enabled()
        w = self.weights.expand(idx.shape[0], -1, -1, -1)
        return None, [w] * self.n_layers


class Recorder:
    def __init__(self) -> None:
        self.logged: list[tuple[int, dict[str, float]]] = []

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.logged.append((step, metrics))


def stub_trainer(step: int, recorder: Recorder, sanity: bool = False) -> SimpleNamespace:
    """A trainer at global step `step` whose validation is drawn one step lower, as Lightning's is mid-epoch."""
    loop = SimpleNamespace(_batches_that_stepped=step - 1)
    fit_loop = SimpleNamespace(epoch_loop=loop)
    return SimpleNamespace(
        sanity_checking=sanity, is_global_zero=True, global_step=step, loggers=[recorder], fit_loop=fit_loop
    )


def stub_module(weights: torch.Tensor) -> nn.Module:
    module = nn.Module()
    module.model = FixedMapModel(weights)
    return module


def validate(callback: MechanismTelemetry, module: nn.Module, step: int, recorder: Recorder, **kw: Any) -> None:
    callback.on_validation_epoch_end(stub_trainer(step, recorder, **kw), module)


def test_induction_step_is_the_first_validation_that_reaches_the_threshold() -> None:
    callback, recorder = MechanismTelemetry(max_half_length=L_HALF), Recorder()
    uniform = stub_module(uniform_causal_map()[None, None])
    induction = stub_module(torch.cat([induction_map(), prev_token_map()], dim=1))
    validate(callback, uniform, 0, recorder, sanity=True)
    assert recorder.logged == [], "nothing during the sanity check"
    validate(callback, uniform, 10, recorder)
    assert callback.induction_step is None
    validate(callback, induction, 20, recorder)
    validate(callback, uniform, 30, recorder)
    assert callback.induction_step == 20, "the first crossing is kept"
    step, tags = recorder.logged[1]
    assert step == 19 and tags["mech/induction_best"] == 1.0 and tags["mech/prev_token_best"] == 1.0
    assert tags["mech_heads/induction/L1H0"] == 1.0 and tags["mech_heads/induction/L1H1"] == 0.0
    assert {t.split("/")[0] for t in tags} == {"mech", "mech_heads"}
    fields = callback.summary_fields(None, uniform)["mechanism"]
    assert fields["induction_step"] == 20 and fields["step"] == 30, "final scores: the last validation's"
    assert fields["induction"] == [[pytest.approx(induction_score(uniform_causal_map()[None]).item())]] * 2


def test_never_reaching_the_threshold_records_null() -> None:
    callback, recorder = MechanismTelemetry(max_half_length=L_HALF), Recorder()
    module = stub_module(prev_token_map())
    validate(callback, module, 5, recorder)
    fields = callback.summary_fields(None, module)["mechanism"]
    assert fields["induction_step"] is None and fields["induction_threshold"] == INDUCTION_THRESHOLD
    assert fields["prev_token_best"] == 1.0 and fields["prev_token_best_head"] == "L0H0"
    assert fields["induction_best"] == 0.0 and fields["distance_mean"] == pytest.approx((T - 1) / T)
    assert fields["probe"] == {"half_length": L_HALF, "sequences": 4, "seed": 0, "vocab_size": 20}


def test_a_run_stopped_before_any_validation_has_null_fields() -> None:
    fields = MechanismTelemetry().summary_fields(None, stub_module(prev_token_map()))["mechanism"]
    assert fields["step"] is None and fields["induction_step"] is None
    assert fields["induction"] is None and fields["induction_best"] is None and fields["sink_mass_mean"] is None


def test_non_finite_weights_and_other_ranks_are_skipped() -> None:
    callback, recorder = MechanismTelemetry(max_half_length=L_HALF), Recorder()
    module = stub_module(induction_map())
    with torch.no_grad():
        module.model.scale.fill_(math.nan)
    validate(callback, module, 5, recorder)
    other_rank = stub_trainer(6, recorder)
    other_rank.is_global_zero = False
    callback.on_validation_epoch_end(other_rank, stub_module(induction_map()))
    assert recorder.logged == [] and callback.step is None


def test_the_induction_step_survives_a_resume() -> None:
    callback = MechanismTelemetry(max_half_length=L_HALF)
    validate(callback, stub_module(induction_map()), 7, Recorder())
    resumed = MechanismTelemetry(max_half_length=L_HALF)
    resumed.load_state_dict(callback.state_dict())
    fields = resumed.summary_fields(None, stub_module(induction_map()))["mechanism"]
    assert fields["induction_step"] == 7 and fields["induction_best"] == 1.0 and fields["step"] == 7


def test_per_head_tags_can_be_left_out() -> None:
    scores = mechanism_scores([induction_map()])
    assert set(scalar_tags(scores, per_head=False)) == {
        "mech/induction_best",
        "mech/prev_token_best",
        "mech/sink_mass_mean",
        "mech/distance_mean",
    }


# ------------------------------------------------------------------------------------- a real tiny run
def test_a_tiny_run_logs_mech_scalars_and_writes_the_mechanism_record(tmp_path: Path, corpus: Path) -> None:
    overrides = [*tiny(corpus=corpus), *LEAN_CALLBACKS, "trainer.max_steps=2", "trainer.val_check_interval=2"]
    train(make_cfg(tmp_path, overrides))
    run = tmp_path / "run"
    mechanism = read_metrics(run)["mechanism"]
    assert mechanism["step"] == 2 and mechanism["probe"]["half_length"] == 16
    assert [len(row) for row in mechanism["induction"]] == [2, 2], "2 layers x 2 heads"
    assert mechanism["induction_step"] is None, "2 steps from a random init: no induction head yet"
    assert 0 < mechanism["induction_best"] < INDUCTION_THRESHOLD
    assert mechanism["induction_best_head"] in {"L0H0", "L0H1", "L1H0", "L1H1"}
    scalars = read_events(run)["scalars"]
    assert {"mech/induction_best", "mech/sink_mass_mean", "mech_heads/prev_token/L1H1"} <= scalars


def test_a_signed_unnormalised_map_is_scored_on_its_magnitude_shares() -> None:
    from attention_lab.training.telemetry import magnitude_shares

    signed = torch.tensor([[[[1.0, 0.0], [-3.0, 1.0]]]])  # (1, 1, 2, 2): a differential-style row with a negative entry
    shares = magnitude_shares(signed)
    torch.testing.assert_close(shares, torch.tensor([[[[1.0, 0.0], [0.75, 0.25]]]]))
    assert prev_token_score(shares).item() == pytest.approx(0.75)
