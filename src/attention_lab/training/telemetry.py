"""Mechanism telemetry: what the attention heads do on a fixed probe, measured at every validation.

The probe is a few sequences of L random tokens followed by the same L tokens again. On the second half a
head can copy: at query L+j (token j again) an induction head attends to key j+1, the token that followed
the previous occurrence, and so predicts the next token. Four scores per head, each a mean over the probe:

- induction score: mean over queries L+j (j = 0..L-2) of the weight on key j+1 (1.0: a perfect induction head);
- previous-token score: mean over queries i >= 1 of the weight on key i-1;
- sink mass: mean over queries i >= 1 of the weight on key 0 (query 0 can only attend to itself);
- mean attention distance: mean over all queries i of sum_j w[i, j] * (i - j), in tokens.

Maps that are not a distribution per row (sigmoid, differential, retention's decayed scores, a softmax whose sink
took mass) are scored on each row's share of its magnitude, |w| / sum |w|: where the map puts its weight, on the
same 0..1 scale as a softmax head's.

Scores are averaged over the probe's sequences as well as its positions: one number per head, less noisy
than one sequence. The functions here are pure (tensor in, tensor out); `MechanismTelemetry` runs them once
per validation (one no-grad forward of the probe, rank 0 only) and never during training steps.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import Tensor

from .callbacks import finite_weights, logging_step

INDUCTION_THRESHOLD = 0.5  # `induction_step`: the first validation whose best head reaches this score
SCORES = ("induction", "prev_token", "sink_mass", "distance")
PREFIX = "mech"  # headline scalars: one TensorBoard section of four charts
HEADS_PREFIX = "mech_heads"  # per-head scalars: one more section, collapsed out of the way


# ------------------------------------------------------------------------------------------------- probe
def probe_half_length(context_length: int, max_half: int = 32) -> int:
    """L: half the probe, so that the whole probe (2L tokens) fits the model's context."""
    return min(max_half, context_length // 2)


def induction_probe(vocab_size: int, half_length: int, sequences: int = 4, seed: int = 0) -> Tensor:
    """(sequences, 2L) token ids: L random ids, then the same L again, from a private generator (the same
    probe at every validation and in every run of the same vocabulary).

    Within a half the ids are distinct when the vocabulary has at least L of them, so every token of the
    second half has exactly one previous occurrence; a smaller vocabulary draws with replacement."""
    gen = torch.Generator().manual_seed(seed)
    if vocab_size >= half_length:
        first = torch.stack([torch.randperm(vocab_size, generator=gen)[:half_length] for _ in range(sequences)])
    else:
        first = torch.randint(0, vocab_size, (sequences, half_length), generator=gen)
    return torch.cat([first, first], dim=1)  # (B, 2L)


# ------------------------------------------------------------------------------------------------ scores
def _heads(weights: Tensor) -> Tensor:
    """(..., H, T, T) -> (N, H, T, T) float: the leading dims (batch) are what the scores average over."""
    if weights.dim() < 3 or weights.shape[-1] != weights.shape[-2]:
        raise ValueError(f"expected attention weights of shape (..., H, T, T), got {tuple(weights.shape)}")
    w = weights.detach().float()
    return w.reshape(-1, *w.shape[-3:])  # (N, H, T, T)


def induction_score(weights: Tensor) -> Tensor:
    """(..., H, 2L, 2L) -> (H,): mean over queries L+j (j = 0..L-2) of the weight on key j+1."""
    w = _heads(weights)
    half = w.shape[-1] // 2
    if half < 2:
        raise ValueError(f"the induction score needs a probe of at least 2x2 tokens, got T={w.shape[-1]}")
    j = torch.arange(half - 1, device=w.device)
    return w[..., half + j, j + 1].mean(dim=(0, -1))  # (N, H, L-1) -> (H,)


def prev_token_score(weights: Tensor) -> Tensor:
    """(..., H, T, T) -> (H,): mean over queries i >= 1 of the weight on key i-1."""
    return _heads(weights).diagonal(offset=-1, dim1=-2, dim2=-1).mean(dim=(0, -1))  # (N, H, T-1) -> (H,)


def sink_mass(weights: Tensor) -> Tensor:
    """(..., H, T, T) -> (H,): mean over queries i >= 1 of the weight on key 0."""
    return _heads(weights)[..., 1:, 0].mean(dim=(0, -1))


def mean_distance(weights: Tensor) -> Tensor:
    """(..., H, T, T) -> (H,): mean over all queries i of sum_j w[i, j] * (i - j), in tokens."""
    w = _heads(weights)
    t = w.shape[-1]
    pos = torch.arange(t, device=w.device, dtype=w.dtype)
    distance = (pos[:, None] - pos[None, :]).clamp(min=0)  # (T, T); only the causal part carries weight
    return (w * distance).sum(dim=-1).mean(dim=(0, -1))  # (N, H, T) -> (H,)


SCORE_FUNCTIONS = {
    "induction": induction_score,
    "prev_token": prev_token_score,
    "sink_mass": sink_mass,
    "distance": mean_distance,
}


def magnitude_shares(weights: Tensor) -> Tensor:
    """|w| / sum |w| per row: a map that is not a distribution (signed, unnormalised) as one, for the scores."""
    magnitude = weights.detach().float().abs()
    return magnitude / magnitude.sum(dim=-1, keepdim=True).clamp_min(1e-12)


def as_distributions(model: torch.nn.Module, layer_weights: list[Tensor]) -> list[Tensor]:
    """Each layer's map, as magnitude shares where its attention says its rows do not sum to 1."""
    blocks = getattr(model, "blocks", None)
    if blocks is None:
        return layer_weights
    return [
        w if getattr(block.attn, "weights_sum_to_one", True) else magnitude_shares(w)
        for block, w in zip(blocks, layer_weights, strict=True)
    ]


def mechanism_scores(layer_weights: list[Tensor]) -> dict[str, Tensor]:
    """Every score for every layer: {score: (n_layers, H)} from per-layer weights (B, H, T, T)."""
    return {name: torch.stack([fn(w) for w in layer_weights]) for name, fn in SCORE_FUNCTIONS.items()}


def head_name(layer: int, head: int) -> str:
    return f"L{layer}H{head}"


def best_head(scores: Tensor) -> tuple[str, float]:
    """The (name, value) of the highest entry of an (n_layers, H) table."""
    flat = int(scores.argmax())
    layer, head = divmod(flat, scores.shape[-1])
    return head_name(layer, head), float(scores[layer, head])


def headline(scores: dict[str, Tensor]) -> dict[str, float]:
    """The four numbers worth a chart each: best induction and previous-token heads, mean sink and distance."""
    return {
        "induction_best": best_head(scores["induction"])[1],
        "prev_token_best": best_head(scores["prev_token"])[1],
        "sink_mass_mean": float(scores["sink_mass"].mean()),
        "distance_mean": float(scores["distance"].mean()),
    }


def scalar_tags(scores: dict[str, Tensor], per_head: bool = True) -> dict[str, float]:
    """TensorBoard tags: `mech/<headline>` and, with per_head, `mech_heads/<score>/L{l}H{h}`."""
    tags = {f"{PREFIX}/{name}": value for name, value in headline(scores).items()}
    if per_head:
        for name, table in scores.items():
            for layer, row in enumerate(table.tolist()):
                tags.update({f"{HEADS_PREFIX}/{name}/{head_name(layer, h)}": v for h, v in enumerate(row)})
    return tags


# ---------------------------------------------------------------------------------------------- callback
class MechanismTelemetry(L.Callback):
    """At each validation: the mechanism scores of the fixed probe, as scalars and in metrics.json.

    One forward of `sequences` x 2L tokens in eval mode and without gradients, on rank 0, skipped during the
    sanity check and on non-finite weights (as the attention maps are). `induction_step` is the global step
    (optimizer steps done) of the first validation whose best induction score reaches INDUCTION_THRESHOLD; it
    is kept in checkpoints so a resumed run still knows it. The scalars go to the step `val/loss` is drawn
    at, so the charts line up.
    """

    def __init__(self, sequences: int = 4, max_half_length: int = 32, seed: int = 0, per_head: bool = True):
        self.sequences, self.max_half_length, self.seed, self.per_head = sequences, max_half_length, seed, per_head
        self.probe: Tensor | None = None  # (B, 2L), built on first use from the model's vocabulary
        self.scores: dict[str, list[list[float]]] | None = None  # the last measurement: score -> [layer][head]
        self.step: int | None = None  # the step of that measurement
        self.induction_step: int | None = None

    def _probe(self, model: torch.nn.Module) -> Tensor | None:
        if self.probe is None:
            half = probe_half_length(model.context_length, self.max_half_length)
            if half < 2:
                return None
            self.probe = induction_probe(model.vocab_size, half, self.sequences, self.seed)
        return self.probe

    def measure(self, model: torch.nn.Module) -> dict[str, Tensor] | None:
        """The scores of `model` on the probe (None when its context is too short for one), train mode kept."""
        probe = self._probe(model)
        if probe is None:
            return None
        was_training = model.training
        model.eval()  # no dropout on the weights being measured
        try:
            with torch.no_grad():
                _, weights = model(probe.to(next(model.parameters()).device), return_weights=True)
        finally:
            model.train(was_training)
        return mechanism_scores(as_distributions(model, weights))  # per layer (B, H, 2L, 2L) -> {score: (n_layers, H)}

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero or not finite_weights(pl_module):
            return
        scores = self.measure(pl_module.model)  # the uncompiled module: the explicit weight path
        if scores is None:
            return
        self.scores = {name: table.tolist() for name, table in scores.items()}
        self.step = trainer.global_step  # optimizer steps done, as metrics.json's global_step counts them
        if self.induction_step is None and best_head(scores["induction"])[1] >= INDUCTION_THRESHOLD:
            self.induction_step = self.step
        tags = scalar_tags(scores, self.per_head)
        for logger in trainer.loggers:  # at val/loss's x position (Lightning's, one below global_step mid-epoch)
            logger.log_metrics(tags, logging_step(trainer))

    def state_dict(self) -> dict[str, Any]:
        return {"induction_step": self.induction_step, "scores": self.scores, "step": self.step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.induction_step = state_dict.get("induction_step")
        self.scores, self.step = state_dict.get("scores"), state_dict.get("step")

    def summary_fields(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        """metrics.json's `mechanism`: the last measurement (null scores when none was made), the step the
        threshold was first reached (null: never), and the probe that was measured."""
        model = pl_module.model
        half = probe_half_length(model.context_length, self.max_half_length)
        probe = {"half_length": half, "sequences": self.sequences, "seed": self.seed, "vocab_size": model.vocab_size}
        fields: dict[str, Any] = {
            "step": self.step,
            "induction_step": self.induction_step,
            "induction_threshold": INDUCTION_THRESHOLD,
            "probe": probe,
            **dict.fromkeys(SCORES),
            **dict.fromkeys(("induction_best", "induction_best_head", "prev_token_best", "prev_token_best_head")),
            **dict.fromkeys(("sink_mass_mean", "distance_mean")),
        }
        if self.scores is not None:
            tables = {name: torch.tensor(rows) for name, rows in self.scores.items()}
            fields.update(self.scores)
            fields.update(headline(tables))
            fields["induction_best_head"] = best_head(tables["induction"])[0]
            fields["prev_token_best_head"] = best_head(tables["prev_token"])[0]
        return {"mechanism": fields}
