"""Attention-map rendering: image shape and content, label sanitising, per-head entropy."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch

from attention_lab.viz import AXIS_H, MAX_WIDTH_PX, TITLE_H, attention_entropy, attention_grid, sanitize_label


def causal_uniform(num_heads: int, t: int) -> torch.Tensor:
    """(H, T, T): row i spreads weight 1 / (i + 1) over keys 0..i."""
    allowed = torch.ones(t, t).tril()
    return (allowed / allowed.sum(-1, keepdim=True)).expand(num_heads, t, t).clone()


def tokens(t: int) -> list[str]:
    return [f"t{i}" for i in range(t)]


def test_grid_is_rgb_uint8():
    img = attention_grid(causal_uniform(8, 32), tokens(32), title="layer 0")
    assert img.dtype == np.uint8
    assert img.ndim == 3 and img.shape[2] == 3
    assert img.shape[0] > 32 and img.shape[1] > 32


def test_more_panels_make_a_larger_image():
    one = attention_grid(causal_uniform(1, 16), tokens(16))
    four = attention_grid(causal_uniform(4, 16), tokens(16))  # two rows of two panels
    eight = attention_grid(causal_uniform(8, 16), tokens(16))  # four rows of two
    assert four.shape[1] > one.shape[1]
    assert eight.shape[0] > four.shape[0]
    assert eight.shape[1] == four.shape[1]


def test_a_single_head_map_is_accepted():
    assert attention_grid(causal_uniform(1, 8)[0], tokens(8)).shape[2] == 3


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return ys.min(), xs.min(), ys.max() + 1, xs.max() + 1


def test_hot_cell_is_brighter_than_cold_cell_and_in_place():
    t = 8
    weights = torch.zeros(1, t, t)
    weights[0, 5, 2] = 1.0  # query 5 attends only to key 2
    img = attention_grid(weights, tokens(t)).astype(int)[TITLE_H:]  # below the title strip and its colour bar
    r, g, b = img[..., 0], img[..., 1], img[..., 2]
    yellow = (r > 200) & (g > 200) & (b < 150)  # viridis at 1.0 is (253, 231, 37)
    purple = (abs(r - 68) < 10) & (g < 20) & (abs(b - 84) < 10)  # viridis at 0.0 is (68, 1, 84)
    hot_top, hot_left, hot_bottom, hot_right = _bbox(yellow)
    cell = hot_right - hot_left
    assert cell == hot_bottom - hot_top > 0  # one square cell
    map_top, map_left, map_bottom, map_right = _bbox(purple)
    assert (map_bottom - map_top, map_right - map_left) == (t * cell, t * cell)
    # row = query, column = key
    assert ((hot_top - map_top) // cell, (hot_left - map_left) // cell) == (5, 2)
    hot = img[hot_top + cell // 2, hot_left + cell // 2]
    cold = img[hot_top + 2 * cell + cell // 2, hot_left + cell // 2]  # query 7, key 2: weight 0
    assert hot.sum() > cold.sum() + 200


@pytest.mark.parametrize(
    "labels",
    [
        ["\n", " ", "", "\t", "é", "中文", "😀", "\x00", "a" * 40, "\\", "€uro", "<|endoftext|>"],
    ],
)
def test_odd_labels_do_not_crash(labels):
    img = attention_grid(causal_uniform(2, len(labels)), labels, title="odd: \n\t😀")
    assert img.dtype == np.uint8


def test_sanitize_label():
    assert sanitize_label("\n") == "\\n"
    assert sanitize_label(" the") == "·the"
    assert sanitize_label("") == "(empty)"
    assert sanitize_label("\x00") == "\\x00"
    long = sanitize_label("abcdefghijkl")
    assert len(long) == 8 and long.endswith("…")


def test_labels_must_match_length():
    with pytest.raises(ValueError, match="token labels"):
        attention_grid(causal_uniform(2, 8), tokens(7))


def test_long_sequences_render():
    img = attention_grid(causal_uniform(8, 128), [f"tok{i}" for i in range(128)], title="T=128")
    assert img.shape[2] == 3


@pytest.mark.parametrize(("num_heads", "t"), [(1, 8), (2, 24), (4, 24), (8, 32), (16, 96), (12, 64)])
def test_the_grid_fits_a_tensorboard_card(num_heads: int, t: int):
    """TensorBoard scales an image to its card (~350 px wide by default): a grid at most MAX_WIDTH_PX wide keeps
    its 14 px labels readable there (the old four-panel rows were ~1600 px wide, a fifth of their size). Up to
    T = 96: longer maps need more than MAX_WIDTH_PX at two pixels per cell."""
    img = attention_grid(causal_uniform(num_heads, t), tokens(t), title="layer 0 - step 300")
    assert img.shape[1] <= MAX_WIDTH_PX, img.shape


def _ink(region: np.ndarray) -> int:
    """Dark pixels (text) in an image region."""
    return int((region.sum(axis=-1) < 300).sum())


def test_axes_are_titled_query_and_key():
    """A "query" title left of the rows and a "key" title under the columns: the strips hold text, and drawing
    nothing there (a grid without them) leaves them blank."""
    img = attention_grid(causal_uniform(2, 16), tokens(16))
    left_strip = img[TITLE_H:, :AXIS_H]
    bottom_strip = img[-AXIS_H:, AXIS_H:]
    assert _ink(left_strip) > 20 and _ink(bottom_strip) > 20


def test_grid_is_cheap():
    """Rendered once per layer at every validation: must stay far below add_figure's ~0.7 s."""
    weights = torch.softmax(torch.randn(8, 32, 32), dim=-1)
    attention_grid(weights, tokens(32))  # warm the font and colormap caches
    times = []
    for _ in range(5):
        start = time.perf_counter()
        attention_grid(weights, tokens(32), title="layer 0")
        times.append(time.perf_counter() - start)
    assert sorted(times)[len(times) // 2] < 0.1


def test_entropy_of_uniform_causal_weights():
    t = 16
    expected = sum(math.log(i + 1) for i in range(t)) / t  # row i is uniform over i + 1 keys
    entropy = attention_entropy(causal_uniform(4, t))
    assert entropy.shape == (4,)
    torch.testing.assert_close(entropy, torch.full((4,), expected))


def test_entropy_of_one_hot_weights_is_zero():
    t = 10
    weights = torch.zeros(2, 3, t, t)  # (B, H, T, T)
    weights[..., torch.arange(t), torch.arange(t)] = 1.0
    entropy = attention_entropy(weights)
    assert entropy.shape == (3,)
    torch.testing.assert_close(entropy, torch.zeros(3))


def test_entropy_is_per_head_and_averages_leading_dims():
    t = 8
    sharp = torch.eye(t)
    flat = torch.full((t, t), 1.0 / t)
    weights = torch.stack([torch.stack([sharp, flat]), torch.stack([sharp, flat])])  # (B=2, H=2, T, T)
    entropy = attention_entropy(weights)
    torch.testing.assert_close(entropy, torch.tensor([0.0, math.log(t)]))


def test_entropy_of_half_precision():
    weights = causal_uniform(2, 8).to(torch.bfloat16)
    assert attention_entropy(weights).dtype == torch.float32
