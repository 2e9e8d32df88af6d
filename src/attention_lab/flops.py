"""Analytic FLOPs of the GPT: what a forward and a training step compute, per token, as a function of length.

Convention (that of `torch.utils.flop_counter` and of the "6N" rule of Kaplan et al. 2020): only matrix products
count, 2 * m * k * n for an (m, k) @ (k, n) product; softmax, masks, norms, GELU, rope, biases and embedding
lookups are elementwise and left out. Attention's (T, T) products are counted whole, as every path here computes
them (the explicit formula masks after the product, SDPA's math path too; the flop counter counts SDPA's fused
kernels the same way, causal or not), so causal attention costs what full attention costs. sliding_window's
blocked kernel computes only its blocks (each block of w queries against 2w keys) once T > w: O(T * w).

A training step is forward + backward = 3 x forward: the backward of each product computes two products of the
same size (the gradients of both operands), and nothing is recomputed (no activation checkpointing). Flash
attention's backward does recompute the scores, so on a GPU the flop counter reports 3.5 x for that part.

Per token means: the FLOPs of one sequence of t tokens, divided by t (every position predicts, so every
position pays for the head). Linear attention's chunks pad the last one, hence a per-token count can be a fraction.
"""

from __future__ import annotations

from .attention.functional import matmul_flops
from .model import GPT

BACKWARD_FACTOR = 2  # backward FLOPs per forward FLOP: each product's two operand gradients
PARTS = ("attention_projections", "attention_mixing", "mlp", "head")


def forward_flops(model: GPT, t: int) -> dict[str, int]:
    """Forward matmul FLOPs of one sequence of `t` tokens, by part, and `total`.

    attention_projections: Q/K/V (and latent, rope) and output projections of every layer; attention_mixing: the
    products that mix tokens (scores and context, or linear attention's state update); mlp: fc and proj; head:
    the logits over the vocabulary."""
    if t < 1:
        raise ValueError(f"t={t}: a sequence has at least one token")
    counts = dict.fromkeys(PARTS, 0)
    for block in model.blocks:
        attention = block.attn.forward_flops(t)
        counts["attention_projections"] += attention["projections"]
        counts["attention_mixing"] += attention["mixing"]
        counts["mlp"] += sum(matmul_flops(t, fc.in_features, fc.out_features) for fc in (block.mlp.fc, block.mlp.proj))
    counts["head"] = matmul_flops(t, model.head.in_features, model.head.out_features)
    counts["total"] = sum(counts[part] for part in PARTS)
    return counts


def forward_flops_per_token(model: GPT, t: int) -> dict[str, float]:
    """`forward_flops` divided by t: what each token of a length-t sequence costs, by part and in total."""
    return {part: value / t for part, value in forward_flops(model, t).items()}


def training_flops_per_token(model: GPT, t: int) -> float:
    """Forward + backward FLOPs per token of a training step on length-t sequences (optimizer step not counted:
    it is O(parameters) per step, not per token)."""
    return (1 + BACKWARD_FACTOR) * forward_flops_per_token(model, t)["total"]
