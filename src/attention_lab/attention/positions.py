"""Position schemes that act inside attention: RoPE rotates q and k, ALiBi biases the scores.

`model.position` picks one of five schemes. Two of them add a vector to the token embeddings and are the
model's business (`learned`, `sinusoidal`: see `model.py`); `none` (NoPE) leaves position to the causal mask
alone. The other two live inside attention, and every attention module carries one of these objects as
`self.position` (the neutral `NoPositions` until `use_positions` attaches another, so the chapter's classes keep
their exact signatures):

- `Rotary` (Su et al. 2021, RoFormer): rotate each (x_i, x_{i + d/2}) pair of q and k by the angle
  position * base^(-2i/d). We use the *half-split* layout (pairs are i and i + d/2, as GPT-NeoX and LLaMA in
  Hugging Face do), not the paper's interleaved pairs (2i, 2i+1): the two differ only by a fixed permutation of
  q/k features, which a model trained from scratch absorbs (tests/attention/test_positions.py checks it).
- `ALiBi` (Press et al. 2022): add -slope_h * |i - j| to the scores of head h, with the paper's geometric slopes.

Neither is tied to a context length: cos/sin and the bias are built for the lengths actually seen, so a model
with rope, alibi or none runs on sequences longer than it was trained on.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .functional import AttentionConfigError

POSITIONS = ("learned", "sinusoidal", "rope", "alibi", "none")
RELATIVE = ("rope", "alibi", "none")  # nothing tied to an absolute position table: any length runs


def take_positions(cache: dict | None, new_tokens: int) -> int:
    """Absolute position of the first of `new_tokens`, counted in the layer's cache (0 without a cache).

    Kept apart from the keys because a sliding window drops old keys while positions keep counting."""
    if cache is None:
        return 0
    start = cache.get("pos", 0)
    cache["pos"] = start + new_tokens
    return start


def alibi_slopes(num_heads: int) -> list[float]:
    """The slopes of Press et al. (2022): for n a power of two, 2^(-8/n), 2^(-16/n), ..., 2^(-8).

    For other n the paper takes the slopes of the closest smaller power of two p, then every other slope of
    2p heads for the n - p heads that remain (so the extra slopes interleave the first ones)."""
    if num_heads < 1:
        raise ValueError(f"num_heads={num_heads} must be >= 1")

    def power_of_two(n: int) -> list[float]:
        return [2.0 ** (-8.0 * (i + 1) / n) for i in range(n)]

    p = 1 << (num_heads.bit_length() - 1)  # the largest power of two <= num_heads
    if p == num_heads:
        return power_of_two(p)
    return power_of_two(p) + power_of_two(2 * p)[0::2][: num_heads - p]


def relative_distance(t_q: int, t_k: int, device: torch.device | None = None) -> Tensor:
    """(Tq, Tk) |i - j| for the last t_q queries over t_k keys (lower-right aligned, as with a KV cache)."""
    i = torch.arange(t_k - t_q, t_k, device=device)[:, None]
    j = torch.arange(t_k, device=device)[None, :]
    return (i - j).abs()


class Float32Constants(nn.Module):
    """Constants (frequencies, slopes) as float32 buffers that follow the module's device but not its dtype.

    `trainer.precision=bf16-true` casts every floating buffer, which would round the frequencies (0.37 rad off
    at position 2048) and so train with other angles than generation, which rebuilds them exactly, uses.
    """

    def _constants(self, device: torch.device | None) -> dict[str, Tensor]:
        """The float32 buffers, computed afresh on `device`."""
        return {}

    def _apply(self, fn, recurse: bool = True):
        super()._apply(fn, recurse)
        for name, value in self._constants(next(iter(self.buffers()), torch.empty(0)).device).items():
            setattr(self, name, value)  # exact float32 values again, on the device the call moved them to
        return self


class NoPositions(Float32Constants):
    """The neutral scheme: attention sees no position except through its mask (learned, sinusoidal, none)."""

    def rotate(self, *tensors: Tensor, start: int) -> tuple[Tensor, ...]:
        return tensors

    def bias(self, t_q: int, t_k: int, device: torch.device) -> Tensor | None:
        return None


class Rotary(NoPositions):
    """RoPE on the last `dim` features of (..., T, dim) tensors, half-split layout, for any positions."""

    def __init__(self, dim: int, base: float = 10000.0):
        super().__init__()
        if dim % 2 or dim < 2:
            raise AttentionConfigError(
                f"model.position=rope needs an even head width, got {dim}: make model.d_model / "
                "attention.num_heads even (for the single-head variants, model.d_model itself), or use "
                "model.position=alibi or none."
            )
        self.dim, self.base = dim, base
        self.register_buffer("inv_freq", self._constants(None)["inv_freq"], persistent=False)  # (dim/2,)

    def _constants(self, device: torch.device | None) -> dict[str, Tensor]:
        return {"inv_freq": inverse_frequencies(self.dim, self.base, device)}

    def angles(self, start: int, length: int) -> tuple[Tensor, Tensor]:
        """cos, sin of shape (T, dim/2) for positions start .. start + length - 1 (computed in float32)."""
        positions = torch.arange(start, start + length, device=self.inv_freq.device, dtype=torch.float32)
        theta = positions[:, None] * self.inv_freq[None, :]  # (T, dim/2)
        return theta.cos(), theta.sin()

    def rotate(self, *tensors: Tensor, start: int) -> tuple[Tensor, ...]:
        """Rotate each (..., T, dim) tensor by the angles of positions start .. start + T - 1."""
        cos, sin = self.angles(start, tensors[0].shape[-2])
        return tuple(apply_rotary(x, cos, sin) for x in tensors)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x (..., T, d) with pairs (x_i, x_{i + d/2}) rotated by the angles whose cos/sin are (T, d/2)."""
    first, second = x.float().chunk(2, dim=-1)
    rotated = torch.cat((first * cos - second * sin, second * cos + first * sin), dim=-1)
    return rotated.to(x.dtype)


class ALiBi(NoPositions):
    """A bias of -slope_h * |i - j| on head h's scores (zero on the diagonal, linear in the distance)."""

    def __init__(self, slopes: list[float]):
        super().__init__()
        self.slope_values = list(slopes)
        self.register_buffer("slopes", self._constants(None)["slopes"], persistent=False)  # (H,)

    def _constants(self, device: torch.device | None) -> dict[str, Tensor]:
        return {"slopes": torch.tensor(self.slope_values, dtype=torch.float32, device=device)}

    def bias(self, t_q: int, t_k: int, device: torch.device) -> Tensor:
        distance = relative_distance(t_q, t_k, device)  # (Tq, Tk)
        return -self.slopes[:, None, None] * distance  # (H, Tq, Tk)


def build_positions(scheme: str, num_heads: int, head_dim: int, rope_base: float = 10000.0) -> NoPositions:
    """What `scheme` does inside an attention module with `num_heads` heads of `head_dim` features."""
    if scheme == "rope":
        return Rotary(head_dim, rope_base)
    if scheme == "alibi":
        return ALiBi(alibi_slopes(num_heads))
    return NoPositions()


def inverse_frequencies(dim: int, base: float, device: torch.device | None = None) -> Tensor:
    """base^(-2i/dim) for i < ceil(dim/2), computed in float64 and kept in float32."""
    return (base ** (-torch.arange(0, dim, 2, dtype=torch.float64, device=device) / dim)).float()


def sinusoidal_table(start: int, length: int, inv_freq: Tensor, d_model: int) -> Tensor:
    """Vaswani et al. (2017): PE(p, 2i) = sin(p / 10000^(2i/d)), PE(p, 2i+1) = cos(p / 10000^(2i/d))."""
    positions = torch.arange(start, start + length, device=inv_freq.device, dtype=torch.float32)
    theta = positions[:, None] * inv_freq[None, :]  # (T, ceil(d/2))
    table = torch.stack((theta.sin(), theta.cos()), dim=-1).flatten(1)  # (T, 2 * ceil(d/2)): sin, cos, ...
    return table[:, :d_model]  # (T, d_model)


class SinusoidalPositions(Float32Constants):
    """The fixed sin/cos table times one learned scalar, initialised to 1 / sqrt(d_model).

    Why the scale: the table's entries are of size 1 (its rows have norm sqrt(d/2)), while GPT-2's init gives token
    embeddings entries of 0.02; added raw, position swamps the tokens 35:1 at d_model=64 and the model starts
    blind to what the tokens are (a first run of experiment=compare_positions with the raw table, seed 0, ended at
    val loss 2.81 against 2.11 for learned positions; scaled, 2.28).
    Vaswani et al. scale the embeddings up by sqrt(d) instead; x-transformers' ScaledSinusoidalEmbedding scales the
    table down with a learned scalar from d^-0.5, which is what this does. Computed for the positions asked for,
    so it has no table that limits the length."""

    def __init__(self, d_model: int, base: float = 10000.0):
        super().__init__()
        self.d_model, self.base = d_model, base
        self.register_buffer("inv_freq", inverse_frequencies(d_model, base), persistent=False)  # (ceil(d/2),)
        self.scale = nn.Parameter(torch.tensor(d_model**-0.5))

    def _constants(self, device: torch.device | None) -> dict[str, Tensor]:
        return {"inv_freq": inverse_frequencies(self.d_model, self.base, device)}

    def forward(self, start: int, length: int) -> Tensor:
        return self.scale * sinusoidal_table(start, length, self.inv_freq, self.d_model)  # (T, d_model)
