"""Winograd's transforms as compiled loops (``jit``), for ``winograd.py``: the input's tiles and
an output gradient's (``tile_transforms``), and the products' back into the output.

numpy runs each transform as a product with a Kronecker matrix (``B^T (x) B^T`` is 36x36 for
4x4 output tiles, dense, though ``B^T`` is mostly zeros), after copying the tiles out of a
padded copy of the input, and the output's tiles are scattered into place by another copy.
Here each transform is the separable product written out, one tile at a time: ``B^T d`` down
the tile's columns into a small scratch, then along its rows into the tile's column of ``V``
(for 4x4 tiles 192 additions and multiplications per channel instead of 1296), read straight
from the unpadded channels-last input; ``A^T M A`` likewise, adding the bias as it writes the
tile's pixels into the channels-last output. Every step is one loop over a line of channels.
A tile reaching past the image reads a zero-filled copy of its part of it, and one reaching
past the output is written to a scratch tile first. The sums are associated differently from
the Kronecker products', so values differ from numpy's path by rounding.

Every array is read flat, lines of channels at computed offsets, each line taken as a slice
that the loop indexes by its counter alone: numba cannot tell that an offset index is not
negative, and the loop then does not vectorise.
"""

from __future__ import annotations

from . import jit


@jit.helper
def _bt4(d0, d1, d2, d3, d4, d5):
    """``B^T d`` for F(4x4, 3x3), points 0, 1, -1, 2, -2 and infinity (``winograd._matrices``)."""
    return (
        4 * d0 - 5 * d2 + d4,
        (d3 + d4) - 4 * (d1 + d2),
        (d4 - d3) + 4 * (d1 - d2),
        (d4 - d2) + 2 * (d3 - d1),
        (d4 - d2) - 2 * (d3 - d1),
        4 * d1 - 5 * d3 + d5,
    )


@jit.helper
def _at4(m0, m1, m2, m3, m4, m5):
    """``A^T m`` for F(4x4, 3x3)."""
    return (
        m0 + (m1 + m2) + (m3 + m4),
        (m1 - m2) + 2 * (m3 - m4),
        (m1 + m2) + 4 * (m3 + m4),
        (m1 - m2) + 8 * (m3 - m4) + m5,
    )


@jit.helper
def _bt2(d0, d1, d2, d3):
    """``B^T d`` for F(2x2, 3x3), points 0, 1, -1 and infinity."""
    return d0 - d2, d1 + d2, d2 - d1, d1 - d3


@jit.helper
def _at2(m0, m1, m2, m3):
    """``A^T m`` for F(2x2, 3x3)."""
    return m0 + m1 + m2, m1 - m2 - m3


@jit.helper
def _a4(y0, y1, y2, y3):
    """``A y`` for F(4x4, 3x3): an output gradient's line of four spread over six points."""
    return (
        y0,
        (y0 + y2) + (y1 + y3),
        (y0 + y2) - (y1 + y3),
        (y0 + 4 * y2) + 2 * (y1 + 4 * y3),
        (y0 + 4 * y2) - 2 * (y1 + 4 * y3),
        y3,
    )


@jit.helper
def _a2(y0, y1):
    """``A y`` for F(2x2, 3x3)."""
    return y0, y0 + y1, y0 - y1, -y1


@jit.helper
def _lines(flat, first, step, c):
    """Six lines of ``c`` values, ``step`` apart from ``first`` in ``flat`` (those past its end
    empty; a caller needing fewer leaves the rest unused)."""
    return (
        flat[first : first + c],
        flat[first + step : first + step + c],
        flat[first + 2 * step : first + 2 * step + c],
        flat[first + 3 * step : first + 3 * step + c],
        flat[first + 4 * step : first + 4 * step + c],
        flat[first + 5 * step : first + 5 * step + c],
    )


@jit.helper
def _transform_lines(m, spread, src, a, step, dst, b, out_step, c):
    """``B^T d`` of ``m + 2`` lines of ``src`` (``a``, ``step``) into as many of ``dst``; with
    ``spread``, ``A y`` of ``m`` lines into ``m + 2``."""
    d0, d1, d2, d3, d4, d5 = _lines(src, a, step, c)
    o0, o1, o2, o3, o4, o5 = _lines(dst, b, out_step, c)
    if spread and m == 4:
        for k in range(c):
            o0[k], o1[k], o2[k], o3[k], o4[k], o5[k] = _a4(d0[k], d1[k], d2[k], d3[k])
    elif spread:
        for k in range(c):
            o0[k], o1[k], o2[k], o3[k] = _a2(d0[k], d1[k])
    elif m == 4:
        for k in range(c):
            o0[k], o1[k], o2[k], o3[k], o4[k], o5[k] = _bt4(
                d0[k], d1[k], d2[k], d3[k], d4[k], d5[k]
            )
    else:
        for k in range(c):
            o0[k], o1[k], o2[k], o3[k] = _bt2(d0[k], d1[k], d2[k], d3[k])


@jit.helper
def _output_lines(m, src, a, step, dst, b, out_step, c, bias):
    """``A^T m`` of ``m + 2`` lines of ``src`` into ``m`` lines of ``dst``, plus ``bias`` (a
    line of ``c`` values, or none)."""
    d0, d1, d2, d3, d4, d5 = _lines(src, a, step, c)
    o0, o1, o2, o3, o4, o5 = _lines(dst, b, out_step, c)
    if m == 4 and bias.shape[0]:
        for k in range(c):
            y0, y1, y2, y3 = _at4(d0[k], d1[k], d2[k], d3[k], d4[k], d5[k])
            o0[k], o1[k], o2[k], o3[k] = y0 + bias[k], y1 + bias[k], y2 + bias[k], y3 + bias[k]
    elif m == 4:
        for k in range(c):
            o0[k], o1[k], o2[k], o3[k] = _at4(d0[k], d1[k], d2[k], d3[k], d4[k], d5[k])
    elif bias.shape[0]:
        for k in range(c):
            y0, y1 = _at2(d0[k], d1[k], d2[k], d3[k])
            o0[k], o1[k] = y0 + bias[k], y1 + bias[k]
    else:
        for k in range(c):
            o0[k], o1[k] = _at2(d0[k], d1[k], d2[k], d3[k])


def tile_transforms(x, v, t, edge, m, side, top, left, th, tw, lo, hi):
    """The tiles of ``x`` ``n h w c`` transformed into ``v`` ``(a a) (n th tw) c`` (``a = m +
    2``), for units ``lo:hi`` of ``(sample, tile row)``, the tiles ``m`` apart from ``top`` rows
    and ``left`` columns before the image, zeros past its edges (compiled by ``jit``). Tiles of
    ``side`` ``a`` are an input's, through ``B^T d B`` (``winograd.transformed_tiles``); of side
    ``m`` an output gradient's, through ``A dY A^T`` (``winograd.weight_gradient``'s first
    step). ``t`` (``a side c``) and ``edge`` (``side side c``) are scratch: the tile transformed
    down its columns, and a tile reaching past the image."""
    a, spread = m + 2, side == m
    h, w, c = x.shape[1], x.shape[2], x.shape[3]
    tiles = v.shape[1]
    xf, vf, tf, ef = x.reshape(-1), v.reshape(-1), t.reshape(-1), edge.reshape(-1)
    for unit in range(lo, hi):
        s, ty = unit // th, unit % th
        for tx in range(tw):
            y, col = ty * m - top, tx * m - left
            if y >= 0 and y + side <= h and col >= 0 and col + side <= w:
                d, row, first = xf, w * c, ((s * h + y) * w + col) * c
            else:
                d, row, first = ef, side * c, 0
                edge[:] = 0
                y0, y1, c0, c1 = max(y, 0), min(y + side, h), max(col, 0), min(col + side, w)
                if y0 < y1 and c0 < c1:
                    edge[y0 - y : y1 - y, c0 - col : c1 - col] = x[s, y0:y1, c0:c1]
            for q in range(side):  # down each column: t[:, q] = B^T d[:, q] (or A y)
                _transform_lines(m, spread, d, first + q * c, row, tf, q * c, side * c, c)
            tile = unit * tw + tx
            for r in range(a):  # along each row: v[r a + q, tile] = (t[r] B)[q] (or A t[r])
                first = (r * a * tiles + tile) * c
                _transform_lines(m, spread, tf, r * side * c, c, vf, first, tiles * c, c)


def output_tiles(p, out, u, corner, bias, m, th, tw, lo, hi):
    """``A^T M A`` of every tile's products ``p`` ``(a a) (n th tw) o`` plus ``bias`` (``o``
    values, or none), into the channels-last output ``out`` ``n oh ow o``, for units ``lo:hi``
    of ``(sample, tile row)`` (compiled by ``jit``). ``u`` (``m a o``) and ``corner`` (``m m
    o``) are scratch: ``A^T M`` of a tile, and a tile reaching past the output."""
    a = m + 2
    tiles = p.shape[1]
    oh, ow, o = out.shape[1], out.shape[2], out.shape[3]
    pf, of, uf, cf = p.reshape(-1), out.reshape(-1), u.reshape(-1), corner.reshape(-1)
    none = bias[:0]
    for unit in range(lo, hi):
        s, ty = unit // th, unit % th
        y = ty * m
        for tx in range(tw):
            tile, col = unit * tw + tx, tx * m
            for q in range(a):  # down each column: u[:, q] = A^T M[:, q]
                first = (q * tiles + tile) * o
                _output_lines(m, pf, first, a * tiles * o, uf, q * o, a * o, o, none)
            inside = y + m <= oh and col + m <= ow
            if inside:
                dst, row, first = of, ow * o, ((s * oh + y) * ow + col) * o
            else:
                dst, row, first = cf, m * o, 0
            for i in range(m):  # along each row, into the output's pixels
                _output_lines(m, uf, i * a * o, o, dst, first + i * row, o, o, bias)
            if not inside:
                rows, cols = min(m, oh - y), min(m, ow - col)
                out[s, y : y + rows, col : col + cols] = corner[:rows, :cols]
