"""Synthetic recall probes as arrays: multi-query associative recall (MQAR) and induction (copy a repeat).

Each task returns `(x, y)` int64 arrays of shape (N, T): `x` is the sequence the model reads and `y[i]` is the
token it must predict after reading `x[:i + 1]`, or IGNORE (-100, cross-entropy's `ignore_index`) where the
next token is not determined by the sequence, so loss and accuracy count only the answers. Everything is drawn
from a numpy Generator, so a (seed, settings) pair always gives the same arrays, and nothing is downloaded.

The joint rules between settings are checked here (`check_mqar`, `check_induction`), once, for the config
check and for a data module built directly; each raises DataConfigError naming the setting and the fix.
"""

from __future__ import annotations

import numpy as np

from .tokenizers import DataConfigError

IGNORE = -100
FILLER = 0  # MQAR's filler token (a key id never drawn as a key)
_CHUNK = 1024  # rows drawn at once: a (rows, vocab) random matrix stays small for any vocabulary


def _distinct(rng: np.random.Generator, n: int, pool: int, k: int) -> np.ndarray:
    """(n, k) integers from [0, pool), distinct within each row, each row a uniform random k-subset in random order."""
    out = np.empty((n, k), dtype=np.int64)
    for start in range(0, n, _CHUNK):
        rows = min(_CHUNK, n - start)
        out[start : start + rows] = np.argsort(rng.random((rows, pool)), axis=1)[:, :k]
    return out


def mqar_num_keys(vocab_size: int) -> int:
    """Keys are ids [1, vocab_size // 2) (0 is the filler), values the rest (disjoint halves, as in Zoology)."""
    return vocab_size // 2


def check_mqar(vocab_size: int, num_pairs: int, num_queries: int | None, seq_len: int) -> int:
    """Raise DataConfigError unless the settings can make MQAR sequences; returns the number of queries."""
    queries = num_pairs if num_queries is None else num_queries
    keys, values = mqar_num_keys(vocab_size) - 1, vocab_size - mqar_num_keys(vocab_size)  # id 0: filler
    if num_pairs > keys or num_pairs > values:
        raise DataConfigError(
            f"data.vocab_size={vocab_size} is too small for data.num_pairs={num_pairs}: keys are unique within a "
            f"sequence and come from one half of the vocabulary ({keys} keys, the filler aside): set "
            f"data.vocab_size={2 * num_pairs + 2} or more (or lower data.num_pairs)."
        )
    needed = 2 * num_pairs + 2 * queries
    if needed > seq_len and num_queries is not None and 2 * num_pairs < seq_len - 1:
        raise DataConfigError(  # the queries were set: fewer of them is the fix that keeps the pairs
            f"data.num_pairs={num_pairs} with data.num_queries={num_queries} needs sequences of {needed} tokens (2 "
            f"per pair, 2 per query) but the sequence is model.context_length={seq_len}: set data.num_queries="
            f"{(seq_len - 2 * num_pairs) // 2} or fewer (or a longer model.context_length={needed})."
        )
    if needed > seq_len:
        fit = seq_len // 4
        raise DataConfigError(
            f"data.num_pairs={num_pairs} with {queries} queries needs sequences of {needed} tokens (2 per pair, "
            f"2 per query) but the sequence is model.context_length={seq_len}: set data.num_pairs={fit} "
            f"(or fewer queries with data.num_queries, or a longer model.context_length={needed})."
        )
    return queries


def mqar(
    rng: np.random.Generator, n: int, seq_len: int, vocab_size: int, num_pairs: int, num_queries: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """n MQAR sequences (Arora et al. 2023, "Zoology"): `num_pairs` key-value pairs, then queries.

    Layout of a sequence of T tokens: `k1 v1 k2 v2 ... kP vP`, then the query region in 2-token slots. A query
    slot starts with a key bound earlier; every other token is filler. The label at a query key is its bound
    value, -100 everywhere else. As in Zoology: keys and values come from disjoint halves of the vocabulary,
    keys and values are distinct within a sequence (no pair is overwritten), each queried key is asked once
    (unless num_queries > num_pairs: then keys are asked again, at random),
    and the token after a query is filler, not the answer (shown answers would let the last queries be solved
    by elimination). Filler is one token, id 0 (FILLER, so keys are ids [1, K)), as Zoology pads with zeros:
    random filler values would follow every query key and read as a second, conflicting binding of it, which
    kept every model at the 1/num_pairs plateau of "name some value of this sequence". Queries sit in uniformly
    random slots (Zoology draws the gaps from a power law favouring short ones).
    """
    queries = check_mqar(vocab_size, num_pairs, num_queries, seq_len)
    num_keys = mqar_num_keys(vocab_size)
    keys = 1 + _distinct(rng, n, num_keys - 1, num_pairs)  # (N, P) in [1, K): id 0 is the filler
    values = num_keys + _distinct(rng, n, vocab_size - num_keys, num_pairs)  # (N, P) in [K, V), distinct
    x = np.full((n, seq_len), FILLER, dtype=np.int64)  # (N, T)
    x[:, 0 : 2 * num_pairs : 2], x[:, 1 : 2 * num_pairs : 2] = keys, values
    # (N, Q) which pairs are queried: each once, as in Zoology; with more queries than pairs, keys asked again
    once = queries <= num_pairs
    asked = _distinct(rng, n, num_pairs, queries) if once else rng.integers(0, num_pairs, (n, queries))
    slots = _distinct(rng, n, (seq_len - 2 * num_pairs) // 2, queries)  # (N, Q) where
    at = 2 * num_pairs + 2 * slots  # (N, Q) position of each query key
    rows = np.arange(n)[:, None]
    x[rows, at] = np.take_along_axis(keys, asked, axis=1)
    y = np.full((n, seq_len), IGNORE, dtype=np.int64)
    y[rows, at] = np.take_along_axis(values, asked, axis=1)  # the bound value
    return x, y


def check_induction(vocab_size: int, seq_len: int) -> None:
    """Raise DataConfigError unless induction sequences fit: a half of distinct tokens, at least 2 long."""
    half = seq_len // 2
    if half < 2:
        raise DataConfigError(
            f"data=induction needs model.context_length >= 4 (a half of at least 2 tokens), got {seq_len}: "
            "set model.context_length=64."
        )
    if vocab_size < half:
        raise DataConfigError(
            f"data.vocab_size={vocab_size} is too small: the first half of a sequence ({half} tokens) has distinct "
            f"tokens, so the next token of the repeat is never ambiguous: set data.vocab_size={half} or more."
        )


def induction(rng: np.random.Generator, n: int, seq_len: int, vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
    """n sequences `r r` (r: T // 2 distinct random tokens; with an odd T one filler token ends it).

    Labelled: every position in the repeat whose next token is in the repeat, i.e. where an induction head
    (find the previous occurrence of the current token, copy what followed it) gives the answer. The first
    token of the repeat is not labelled: nothing in the sequence says where the repeat starts.
    """
    check_induction(vocab_size, seq_len)
    half = seq_len // 2
    first = _distinct(rng, n, vocab_size, half)  # (N, L)
    x = rng.integers(0, vocab_size, (n, seq_len))  # (N, T); only an odd T keeps its last (filler) token
    x[:, :half], x[:, half : 2 * half] = first, first
    y = np.full((n, seq_len), IGNORE, dtype=np.int64)
    y[:, half : 2 * half - 1] = first[:, 1:]  # at position L + j the answer is r[j + 1]
    return x, y
