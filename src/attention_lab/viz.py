"""Rendering for TensorBoard: pure functions, tensor in, array out (no Lightning, no TensorBoard here).

The attention-map callback renders one grid per layer at every validation, so rendering must be cheap.
A matplotlib figure through `add_figure` costs ~0.6-0.9 s per call on the reference CPU machine, so the
heatmaps are drawn as numpy arrays (a colormap lookup table, upscaled with `np.repeat`) and only the text
is drawn with PIL. An (8, 32, 32) grid renders in a few milliseconds; the result goes to `add_image`
(dataformats="HWC"). The loss-by-position plot is drawn once per run, so it uses matplotlib's Agg canvas.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

# TensorBoard shows an image scaled to its card, about 350 px wide by default (Time Series), so the grid is sized
# for that: at most MAX_WIDTH_PX wide, two panels a row, and text large enough to stay readable scaled down
# (14 px drawn, ~9 px shown). A wide grid of four 384 px panels with 10 px text was ~1600 px wide: shown at a
# fifth of its size, its labels were unreadable.
MAX_COLS = 2  # panels per row of the grid
MAX_WIDTH_PX = 560  # the whole image, labels included (a single panel may come out narrower)
PANEL_MAX_PX = 320  # side of one heatmap at most (one head alone); each cell is an integer number of pixels
MIN_CELL, MAX_CELL = 2, 24
GAP = 10  # pixels between panels
PAD = 4
FONT_SIZE = 14
TITLE_H = FONT_SIZE + 10  # strip above the grid for the title and the colour scale
HEAD_TITLE_H = FONT_SIZE + 4  # strip above each panel for "head i"
AXIS_H = FONT_SIZE + 6  # strip for the axis titles: "query" left of the rows, "key" under the columns
MAX_LABEL_CHARS = 8
BACKGROUND = 255
TEXT = (0, 0, 0)

_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t", " ": "·"}


@lru_cache(maxsize=4)
def _lut(cmap: str) -> np.ndarray:
    """(256, 3) uint8 colour table: a lookup per cell is far cheaper than calling the colormap per render."""
    import matplotlib

    return (matplotlib.colormaps[cmap](np.linspace(0.0, 1.0, 256))[:, :3] * 255).round().astype(np.uint8)


@lru_cache(maxsize=1)
def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """DejaVu Sans from matplotlib's data (accents, Greek, Cyrillic, symbols); PIL's default as a fallback.

    PIL's built-in font covers ASCII only, and BPE tokens are often not ASCII.
    """
    import matplotlib

    try:
        return ImageFont.truetype(str(Path(matplotlib.get_data_path()) / "fonts/ttf/DejaVuSans.ttf"), FONT_SIZE)
    except OSError:
        return ImageFont.load_default()


def _line_height() -> int:
    ascent, descent = _font().getmetrics() if hasattr(_font(), "getmetrics") else (10, 2)
    return ascent + descent


def _min_row_px() -> int:
    """Rows at least this tall get every label: the glyphs' ascent plus one pixel (descenders may touch)."""
    return _line_height() - 2


def sanitize_label(token: str, max_chars: int = MAX_LABEL_CHARS) -> str:
    """A short printable label: whitespace made visible, control characters escaped, long tokens cut.

    Token strings from a BPE tokenizer often start with a space or are a bare newline; drawn as-is they
    would be invisible or break the line.
    """
    if token == "":
        return "(empty)"
    chars = []
    for ch in token:
        if ch in _ESCAPES:
            chars.append(_ESCAPES[ch])
        elif not ch.isprintable():
            chars.append(f"\\x{ord(ch):02x}" if ord(ch) < 256 else "?")
        else:
            chars.append(ch)
    label = "".join(chars)
    return label if len(label) <= max_chars else label[: max_chars - 1] + "…"


def _colorize(panel: np.ndarray, vmax: float, cell: int, lut: np.ndarray) -> np.ndarray:
    """(T, T) float weights -> (T * cell, T * cell, 3) uint8 heatmap, row = query, column = key."""
    index = np.clip(panel / vmax * 255.0, 0, 255).astype(np.uint8)  # (T, T)
    rgb = lut[index]  # (T, T, 3)
    return np.repeat(np.repeat(rgb, cell, axis=0), cell, axis=1)


def _label_strip(labels: list[str], cell: int, step: int, width: int) -> Image.Image:
    """Labels right-aligned, one every `step` rows, each centred on its row: (T * cell, width) white strip."""
    strip = Image.new("RGB", (width, len(labels) * cell), (BACKGROUND,) * 3)
    draw = ImageDraw.Draw(strip)
    font, line_h = _font(), _line_height()
    free_from = -math.inf  # the first y below the last label drawn
    for i in range(0, len(labels), step):
        y = min(max(i * cell + (cell - line_h) / 2, 0), strip.height - line_h)  # keep the end labels inside
        if y < free_from - 2:  # an end label pushed inside would cover its neighbour
            continue
        text_w = draw.textlength(labels[i], font=font)
        draw.text((width - PAD - text_w, y), labels[i], fill=TEXT, font=font)
        free_from = y + line_h
    return strip


def _layout(num_heads: int, t: int, label_w: int) -> tuple[int, int, int, int]:
    """(cell px, label step, columns, rows): panels share what MAX_WIDTH_PX leaves after the labels."""
    cols = min(num_heads, MAX_COLS)
    side = min(PANEL_MAX_PX, (MAX_WIDTH_PX - AXIS_H - label_w) // cols - GAP)
    cell = max(MIN_CELL, min(MAX_CELL, side // max(t, 1)))
    step = max(1, math.ceil(_min_row_px() / cell))  # thin the labels when rows are shorter than a line
    return cell, step, cols, math.ceil(num_heads / cols)


def _draw_scale(image: Image.Image, draw: ImageDraw.ImageDraw, right: int, vmax: float, lut: np.ndarray) -> None:
    """A small colour bar "0 [gradient] vmax" ending at x = `right` in the title strip, so a colour can be read
    as a weight."""
    font, top = _font(), (TITLE_H - 10) // 2
    high = f"{vmax:.2g}"
    x_high = right - int(draw.textlength(high, font=font))
    x_bar = x_high - PAD - 64
    gradient = lut[np.linspace(0, 255, 64).astype(np.uint8)]  # (64, 3)
    image.paste(Image.fromarray(np.repeat(gradient[None], 10, axis=0)), (x_bar, top))
    text_y = (TITLE_H - _line_height()) // 2
    draw.text((x_bar - PAD - int(draw.textlength("0", font=font)), text_y), "0", fill=TEXT, font=font)
    draw.text((x_high, text_y), high, fill=TEXT, font=font)


def _axis_title(text: str, rotate: bool) -> Image.Image:
    """An axis title on white, AXIS_H tall (rotated to read bottom-to-top when `rotate`)."""
    font = _font()
    strip = Image.new("RGB", (int(font.getlength(text)) + 2 * PAD, AXIS_H), (BACKGROUND,) * 3)
    ImageDraw.Draw(strip).text((PAD, (AXIS_H - _line_height()) // 2), text, fill=TEXT, font=font)
    return strip.transpose(Image.Transpose.ROTATE_90) if rotate else strip


def attention_grid(
    weights: Tensor,
    tokens: Sequence[str] | None = None,
    title: str = "",
    cmap: str = "viridis",
) -> np.ndarray:
    """Every head's attention map as a panel in one RGB image (Himg, Wimg, 3) uint8, at most MAX_WIDTH_PX wide
    (up to T ~ 100: longer maps keep two pixels per cell and grow wider).

    weights: (H, T, T) post-softmax weights of one layer for one probe sequence (a (T, T) map is one head).
    Row = query, column = key (axis titles say so). Panels go two to a row; all share one colour scale,
    0 .. max weight, so heads are comparable. Token labels go on the left of the first column and under the
    lowest panel of each column; when rows are shorter than a line of text only every k-th label is drawn.
    """
    w = weights.detach()
    if w.dim() == 2:
        w = w.unsqueeze(0)
    if w.dim() != 3 or w.shape[-1] != w.shape[-2]:
        raise ValueError(f"attention_grid expects weights of shape (H, T, T), got {tuple(weights.shape)}.")
    w = w.float().cpu().numpy()  # (H, T, T)
    num_heads, t, _ = w.shape
    tokens = [str(i) for i in range(t)] if tokens is None else list(tokens)
    if len(tokens) != t:
        raise ValueError(f"got {len(tokens)} token labels for T={t} positions: pass one label per position.")

    labels = [sanitize_label(tok) for tok in tokens]
    font = _font()
    label_w = int(max(font.getlength(lab) for lab in labels)) + 2 * PAD
    cell, step, cols, rows = _layout(num_heads, t, label_w)
    side = t * cell
    left = AXIS_H + label_w  # x of the first panel: the "query" title, then the query labels
    pitch_x, pitch_y = side + GAP, HEAD_TITLE_H + side + GAP
    width = max(left + cols * pitch_x, 2 * AXIS_H + label_w + 200)  # room for the title and the colour scale
    height = TITLE_H + rows * pitch_y + label_w + AXIS_H
    canvas = np.full((height, width, 3), BACKGROUND, dtype=np.uint8)

    lut = _lut(cmap)
    vmax = float(w.max()) if w.size and w.max() > 0 else 1.0
    origins = []  # top-left corner of each heatmap
    for h in range(num_heads):
        r, c = divmod(h, cols)
        x0, y0 = left + c * pitch_x, TITLE_H + r * pitch_y + HEAD_TITLE_H
        canvas[y0 : y0 + side, x0 : x0 + side] = _colorize(w[h], vmax, cell, lut)
        origins.append((x0, y0))

    image = Image.fromarray(canvas)
    draw = ImageDraw.Draw(image)
    if title:
        draw.text((PAD, (TITLE_H - _line_height()) // 2), title, fill=TEXT, font=font)
    for h, (x0, y0) in enumerate(origins):
        draw.text((x0, y0 - HEAD_TITLE_H + 1), f"head {h}", fill=TEXT, font=font)

    y_strip = _label_strip(labels, cell, step, label_w)  # query labels, left of the first column
    x_strip = y_strip.transpose(Image.Transpose.ROTATE_90)  # key labels: read bottom-to-top under a panel
    query, key = _axis_title("query", rotate=True), _axis_title("key", rotate=False)
    for h, (x0, y0) in enumerate(origins):
        if h % cols == 0:
            image.paste(y_strip, (AXIS_H, y0))
            image.paste(query, (0, y0 + max(0, (side - query.height) // 2)))
        if h + cols >= num_heads:  # lowest panel of its column
            image.paste(x_strip, (x0, y0 + side))
            image.paste(key, (x0 + max(0, (side - key.width) // 2), y0 + side + label_w))

    _draw_scale(image, draw, width - PAD, vmax, lut)
    return np.array(image)  # (Himg, Wimg, 3) uint8, a writable copy


def attention_entropy(weights: Tensor) -> Tensor:
    """Mean entropy (nats) of each head's attention rows: (..., H, T, T) -> (H,).

    Low entropy = a head that focuses on a few keys; log(T) = uniform. Zero weights (masked keys) contribute
    0 (0 log 0 = 0, via xlogy). Pure tensor ops on the input's device: no `.item()`, so logging it does
    not force a device sync.
    """
    if weights.dim() < 3:
        raise ValueError(f"attention_entropy expects (..., H, T, T), got {tuple(weights.shape)}.")
    w = weights.detach()
    if w.dtype in (torch.float16, torch.bfloat16):
        w = w.float()  # log of small half-precision weights loses too much
    row_entropy = -torch.special.xlogy(w, w).sum(dim=-1)  # (..., H, T)
    return row_entropy.movedim(-2, 0).reshape(w.shape[-3], -1).mean(dim=-1)  # (H,)


def loss_by_position_figure(
    loss: Sequence[float], bucket_size: int, context_length: int | None = None, title: str = ""
) -> np.ndarray:
    """Mean loss against position in the window, as an RGB image (Himg, Wimg, 3) uint8.

    loss: one mean per bucket of `bucket_size` consecutive positions, plotted at the bucket's centre. A dashed
    line marks `context_length`, the length the model was trained on: where a position scheme stops
    generalising, the curve bends up past it. Drawn once per run, so matplotlib's cost does not matter; Agg
    without pyplot, so there is no global figure state to leak.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.0, 3.5), dpi=100, layout="constrained")
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    x = [(i + 0.5) * bucket_size for i in range(len(loss))]  # bucket centres
    ax.plot(x, list(loss), marker="o", markersize=3, linewidth=1.4)
    if context_length is not None and context_length < len(loss) * bucket_size:
        ax.axvline(context_length, color="gray", linestyle="--", linewidth=1, label=f"context_length={context_length}")
        ax.legend(fontsize=8, frameon=False)
    ax.set(xlabel="position in the window", ylabel="mean val loss", title=title or "val loss by position")
    ax.grid(alpha=0.3)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()  # (Himg, Wimg, 3) uint8
