"""Per-layer attention patterns (`model.layers`): which variant each layer of the GPT uses.

Hybrid models interleave cheap local layers with a few global ones (Gemma-2/3, Mistral-style local/global
stacks, Jamba-like hybrids). `model.layers` names that pattern; `null` keeps "the same attention everywhere".

Spellings, all equivalent to four layers "three sliding_window, then one multihead":
- a string:   `model.layers=sliding_window*3+multihead`   (terms joined by `+`, `*k` repeats one term)
- a list:     `model.layers=[sliding_window*3,multihead]`  or  `[sliding_window,sliding_window,...]`
- a list of mappings in a preset: `- {name: sliding_window, window: 16}` (a term with its own settings)

The pattern is repeated to fill `model.n_layers`, which must be a multiple of its length. Each layer's settings
are the variant's registry defaults, overlaid with the `attention` group's settings that the variant has
(num_heads, dropout, ... are shared; gqa's num_kv_heads means nothing to multihead and is left out), overlaid
with the term's own settings. The compact label (`sliding_window*3+multihead`) names the pattern in run
names, `compare` tables and the HParams tab.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from .functional import AttentionConfigError
from .registry import get_variant, resolve_knobs

Pattern = str | Sequence[Any] | None
_TERM = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(?:\*\s*(\d+))?\s*$")
EXAMPLE = "model.layers=sliding_window*3+multihead"


def pattern_terms(layers: Pattern) -> list[tuple[str, dict[str, Any], int]]:
    """(name, own settings, repeat) per term, in order."""
    items: Sequence[Any] = layers.split("+") if isinstance(layers, str) else layers
    if isinstance(layers, Mapping) or not isinstance(items, Sequence) or not items:
        raise AttentionConfigError(
            f"model.layers={layers!r} is not a layer pattern: use null, a pattern like {EXAMPLE}, or a list of "
            "variant names / {name: ..., <settings>} mappings."
        )
    terms = []
    for item in items:
        if isinstance(item, Mapping):
            settings = {str(k): v for k, v in item.items()}
            name, repeat = settings.pop("name", None), settings.pop("repeat", 1)
            if not isinstance(name, str) or not isinstance(repeat, int) or isinstance(repeat, bool) or repeat < 1:
                raise AttentionConfigError(
                    f"model.layers entry {dict(item)!r} needs `name: <variant>` (and optionally `repeat: <k >= 1>`)."
                )
            terms.append((name, settings, repeat))
            continue
        match = _TERM.match(item) if isinstance(item, str) else None
        if match is None or match.group(2) == "0":
            raise AttentionConfigError(
                f"model.layers term {item!r} is not `<variant>` or `<variant>*<k>` (k >= 1): e.g. {EXAMPLE}."
            )
        terms.append((match.group(1), {}, int(match.group(2) or 1)))
    return terms


def layer_settings(attention: Mapping[str, Any], layers: Pattern, n_layers: int) -> list[dict[str, Any]]:
    """One attention config ({"name": ..., knobs}) per layer, after checking names, settings and the length.

    `attention` is the `attention` group (name and settings); without a pattern every layer gets it as it is."""
    if layers is None:
        return [dict(attention) for _ in range(n_layers)]
    shared = {key: value for key, value in attention.items() if key != "name"}
    pattern: list[dict[str, Any]] = []
    for name, own, repeat in pattern_terms(layers):
        try:
            variant = get_variant(name)
        except AttentionConfigError as error:
            raise AttentionConfigError(f"model.layers: {error}") from None
        inherited = {key: value for key, value in shared.items() if key in variant.knobs}
        try:
            knobs = resolve_knobs(name, {**inherited, **own})
        except AttentionConfigError as error:
            raise AttentionConfigError(f"model.layers, layer {name}: {error}") from None
        pattern += [{"name": name, **knobs}] * repeat
    if n_layers % len(pattern):
        raise AttentionConfigError(
            f"model.layers={pattern_label(layers)} is {len(pattern)} layers long, which does not divide "
            f"model.n_layers={n_layers}: set model.n_layers to a multiple of {len(pattern)} or change the pattern."
        )
    return [dict(layer) for layer in pattern * (n_layers // len(pattern))]


def pattern_label(layers: Pattern, attention_name: str | None = None) -> str:
    """`sliding_window*3+multihead` (own settings in brackets: `sliding_window[window=16]*3`); without a
    pattern, the attention group's name."""
    if layers is None:
        return str(attention_name)
    runs: list[list[Any]] = []  # [term, repeat]; neighbours that are the same term merge: a,a,a -> a*3
    for name, own, repeat in pattern_terms(layers):
        settings = ",".join(f"{key}={value}" for key, value in own.items())
        term = f"{name}[{settings}]" if settings else name
        if runs and runs[-1][0] == term:
            runs[-1][1] += repeat
        else:
            runs.append([term, repeat])
    return "+".join(f"{term}*{repeat}" if repeat > 1 else term for term, repeat in runs)
