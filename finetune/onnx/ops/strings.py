"""String ops on object arrays of ``str``: StringConcat, StringSplit, StringNormalizer,
RegexFullMatch, and TfIdfVectorizer (n-gram counts of strings or integers). None has a
gradient."""

from __future__ import annotations

import re

import numpy as np

from ...errors import OnnxImportError, ShapeError
from ...tensor import Tensor
from ..limits import check_broadcast
from ..registry import register
from ._common import wrap


def _strings(op: str, x: Tensor) -> np.ndarray:
    data = np.asarray(x._data)
    if data.dtype.kind not in "OUS":
        raise ShapeError(f"{op}: expects a string tensor, got {data.dtype} elements")
    return data


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _object_array(values, shape) -> np.ndarray:
    out = np.empty(shape, dtype=object)
    out.reshape(-1)[:] = list(values) if not isinstance(values, np.ndarray) else values.reshape(-1)
    return out


@register("StringConcat", 20, differentiable=False)
def string_concat(x: Tensor, y: Tensor) -> Tensor:
    a, b = _strings("StringConcat", x), _strings("StringConcat", y)
    check_broadcast("StringConcat", a.shape, b.shape)
    a, b = np.broadcast_arrays(a, b)
    joined = [_text(p) + _text(q) for p, q in zip(a.reshape(-1), b.reshape(-1))]
    return wrap(_object_array(joined, a.shape))


@register("StringSplit", 20, differentiable=False)
def string_split(x: Tensor, *, delimiter=None, maxsplit=None) -> tuple[Tensor, Tensor]:
    """Splits every string (on runs of whitespace when ``delimiter`` is empty, as Python's
    ``str.split()``), at most ``maxsplit`` times; pads with "" to the longest split.
    Returns the pieces (..., longest) and the count of each (int64)."""
    data = _strings("StringSplit", x)
    sep = delimiter or None
    limit = -1 if maxsplit is None else int(maxsplit)
    # an empty string has no pieces (onnxruntime's count is 0, not Python's [""])
    pieces = [_text(s).split(sep, limit) if _text(s) else [] for s in data.reshape(-1)]
    counts = np.array([len(p) for p in pieces], dtype=np.int64).reshape(data.shape)
    width = max((len(p) for p in pieces), default=0)
    out = np.full((len(pieces), width), "", dtype=object)
    for row, parts in enumerate(pieces):
        out[row, : len(parts)] = parts
    return wrap(out.reshape(*data.shape, width)), wrap(counts)


@register("StringNormalizer", 10, differentiable=False)
def string_normalizer(
    x: Tensor, *, case_change_action="NONE", is_case_sensitive=0, locale=None, stopwords=None
) -> Tensor:
    """Drops the elements equal to a stop word (ignoring case unless ``is_case_sensitive``),
    then changes case (of ASCII letters only in the "C" locale, of every letter otherwise).
    Input (C) or (1, C); when every element goes, one "" is left."""
    data = _strings("StringNormalizer", x)
    if data.ndim not in (1, 2) or (data.ndim == 2 and data.shape[0] != 1):
        raise ShapeError(
            f"StringNormalizer: input must be [C] or [1, C], got shape {list(data.shape)}"
        )
    if case_change_action not in ("NONE", "LOWER", "UPPER"):
        raise OnnxImportError(
            f"StringNormalizer: case_change_action {case_change_action!r} is not NONE, LOWER or "
            "UPPER"
        )
    words = [_text(s) for s in data.reshape(-1)]
    if stopwords:
        if is_case_sensitive:
            stops = set(stopwords)
            words = [w for w in words if w not in stops]
        else:
            stops = {s.lower() for s in stopwords}
            words = [w for w in words if w.lower() not in stops]
    if case_change_action != "NONE":
        change = str.lower if case_change_action == "LOWER" else str.upper
        if locale in ("C", "POSIX"):  # the C locale changes the case of ASCII letters only
            words = ["".join(change(c) if c.isascii() else c for c in w) for w in words]
        else:
            words = [change(w) for w in words]
    words = words or [""]
    shape = (len(words),) if data.ndim == 1 else (1, len(words))
    return wrap(_object_array(words, shape))


@register("RegexFullMatch", 20, differentiable=False)
def regex_full_match(x: Tensor, *, pattern=None) -> Tensor:
    """Whether each whole string matches ``pattern`` (Python's ``re``, which reads RE2's common
    syntax the same way)."""
    if pattern is None:
        raise OnnxImportError("RegexFullMatch: the pattern attribute is required")
    try:
        compiled = re.compile(pattern)
    except re.error as error:
        raise OnnxImportError(f"RegexFullMatch: invalid pattern {pattern!r}: {error}") from None
    data = _strings("RegexFullMatch", x)
    found = [compiled.fullmatch(_text(s)) is not None for s in data.reshape(-1)]
    return wrap(np.array(found, dtype=bool).reshape(data.shape))


def _ngram_table(
    ngram_counts, ngram_indexes, pool, min_gram_length, max_gram_length
) -> dict[tuple, int]:
    """Each n-gram of the pool (within the gram lengths) → its output column."""
    table: dict[tuple, int] = {}
    starts = list(ngram_counts) + [len(pool)]
    position = 0  # running n-gram number, which ngram_indexes is indexed by
    for n, (start, end) in enumerate(zip(starts[:-1], starts[1:]), start=1):
        count = (end - start) // n
        for k in range(count):
            gram = tuple(pool[start + k * n : start + (k + 1) * n])
            if min_gram_length <= n <= max_gram_length:
                table[gram] = int(ngram_indexes[position])  # a repeated n-gram: the last wins
            position += 1
    return table


@register("TfIdfVectorizer", 9, differentiable=False)
def tfidf_vectorizer(
    x: Tensor,
    *,
    max_gram_length=None,
    max_skip_count=None,
    min_gram_length=None,
    mode=None,
    ngram_counts=None,
    ngram_indexes=None,
    pool_int64s=None,
    pool_strings=None,
    weights=None,
) -> Tensor:
    """Counts the pool's n-grams in each row of ``x`` ((C) or (B, C)), with up to
    ``max_skip_count`` items skipped between an n-gram's items (unigrams count once), then
    weights the counts by ``mode``: TF (counts), IDF (weight where present), TFIDF
    (weight * count; weights default to 1). Output float32 (output size) or (B, output size)."""
    op = "TfIdfVectorizer"
    missing = [
        name
        for name, value in (
            ("max_gram_length", max_gram_length),
            ("min_gram_length", min_gram_length),
            ("max_skip_count", max_skip_count),
            ("mode", mode),
            ("ngram_counts", ngram_counts),
            ("ngram_indexes", ngram_indexes),
        )
        if value is None
    ]
    if missing:
        raise OnnxImportError(f"{op}: required attributes missing: {missing}")
    if mode not in ("TF", "IDF", "TFIDF"):
        raise OnnxImportError(f"{op}: mode {mode!r} is not TF, IDF or TFIDF")
    if (pool_int64s is None) == (pool_strings is None):
        raise OnnxImportError(f"{op}: exactly one of pool_int64s and pool_strings is needed")
    pool = list(pool_int64s) if pool_int64s is not None else [_text(s) for s in pool_strings]
    table = _ngram_table(ngram_counts, ngram_indexes, pool, min_gram_length, max_gram_length)
    size = max(ngram_indexes) + 1 if len(ngram_indexes) else 0
    data = np.asarray(x._data)
    if data.ndim > 2 or (data.ndim == 2 and data.shape[0] < 1):
        raise ShapeError(f"{op}: input must be [C] or [B, C] with B > 0, got {list(data.shape)}")
    rows = data.reshape(1, -1) if data.ndim < 2 else data
    if pool_strings is not None:
        rows = np.vectorize(_text, otypes=[object])(rows) if rows.size else rows
    else:
        rows = rows.astype(np.int64)
    counts = np.zeros((rows.shape[0], size), dtype=np.int64)
    for r, row in enumerate(rows.tolist()):
        length = len(row)
        for start in range(length):
            # unigrams once; longer n-grams once per skip distance
            if min_gram_length <= 1 and (row[start],) in table:
                counts[r, table[(row[start],)]] += 1
            for skip in range(1, max_skip_count + 2):
                for n in range(max(min_gram_length, 2), max_gram_length + 1):
                    last = start + (n - 1) * skip
                    if last >= length:
                        break
                    column = table.get(tuple(row[start : last + 1 : skip]))
                    if column is not None:
                        counts[r, column] += 1
    w = np.ones(size) if not weights else np.asarray(weights, dtype=np.float64)
    if mode == "TF":
        out = counts.astype(np.float64)
    elif mode == "IDF":
        out = np.where(counts > 0, w, 0.0)
    else:
        out = counts * w
    out = out.astype(np.float32)
    return wrap(out[0] if data.ndim < 2 else out)
