"""Winograd's minimal filtering F(m x m, 3 x 3) for stride-1 3x3 convolutions.

A 3x3 convolution computes each ``m x m`` output tile from an ``(m+2) x (m+2)`` input tile with
``(m+2)^2`` multiplications per channel pair instead of ``9 m^2`` (Lavin and Gray, "Fast
Algorithms for Convolutional Neural Networks", 2016): 2.25x fewer for m = 2, 4x for m = 4.
With input tiles ``d``, the transformed weight ``U = G w G^T`` and the output tile is
``A^T [sum_c U (B^T d B)] A``. Each of the three transforms is a small linear map applied to a
flattened tile, so here it is one BLAS product with a Kronecker matrix (``B^T (x) B^T`` is
36x36 for m = 4), and the channel sum is one batched product per tile position:

    tiles   ``n c h w -> (a a) (n th tw) c``     one strided copy of whole channel vectors
    input   ``(a a) x (a a) @ (a a) (P c)``      P = n th tw tiles
    product ``(a a) P c @ (a a) c o``            the multiply-accumulate, 1/4 of direct for m = 4
    output  ``(m m) x (a a) @ (a a) (P o)``
    scatter ``(m m) n th tw o -> n h w o``       plus the bias, in the same copy

Every step keeps the channels last, the axis the matrix products contract over or produce: the
copies then move runs of whole channel vectors (64-512 floats) rather than one tile row of 2-14
pixels, and the output is channels last too (an ``n o h w`` view of ``n h w o`` memory, as
PyTorch's ``channels_last`` format), so the next layer reads it without a transpose.

numpy cannot run the transforms as tight loops, so they cost about as much as the products they
save on small channel counts; ``tile_size`` picks Winograd only where it measured faster
(docs/performance.md). Once numba is loaded (``jit.load``), the input and output transforms run
compiled instead (``winograd_compiled.py``: the separable transforms, straight from the unpadded
input and into the output with the bias; 2-4x numpy's steps, ResNet-18's forward 0.82-0.89x).

Rounding: m = 4 uses the points 0, +-1, +-2 and loses about two decimal digits against a
direct float32 convolution (relative error ~1e-5 of the output's range), m = 2 about half a
digit; float64 stays exact to ~1e-14.
"""

from __future__ import annotations

import numpy as np

from ..parallel import split
from . import jit, winograd_compiled
from .layout import as_nchw, pad_last
from .matmul import stacked_matmul
from .scratch import scratch

# both channel counts at least this: Winograd. Narrower layers too, when the input has at least
# half this and the output from a quarter of this to twice the input (``tile_size``); below,
# the transforms cost more than the products save
MIN_CHANNELS = 64
# outputs at least this many pixels a side use 4x4 tiles; smaller ones (down to 4) use 2x2.
# At 14x14 (a ResNet's layer3) 4x4 tiles cover 16x16 and leave the weight gradient's 36
# per-position products ``dM V^T`` too few tiles to sum over: 2x2 tiles are as fast forward at
# batch 8, faster at batches 1-4, and 10.4 against 14.1 ms for the weight gradient
MIN_SIZE_FOR_4 = 28
MIN_SIZE = 4
# with the transforms compiled (``winograd_compiled``), every layer with at least this many
# channels each way: GoogLeNet's 16 -> 32 and 32 -> 96 branches took it too, forward 0.91-0.92x
# (batch 1 and 8), full training step 0.80-0.83x
MIN_CHANNELS_COMPILED = 16


def _matrices(m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(B^T, G, A^T)`` of F(m, 3) in float64."""
    if m == 2:  # points 0, 1, -1, inf
        bt = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]
        g = [[1, 0, 0], [1 / 2, 1 / 2, 1 / 2], [1 / 2, -1 / 2, 1 / 2], [0, 0, 1]]
        at = [[1, 1, 1, 0], [0, 1, -1, -1]]
    elif m == 4:  # points 0, 1, -1, 2, -2, inf
        bt = [
            [4, 0, -5, 0, 1, 0],
            [0, -4, -4, 1, 1, 0],
            [0, 4, -4, -1, 1, 0],
            [0, -2, -1, 2, 1, 0],
            [0, 2, -1, -2, 1, 0],
            [0, 4, 0, -5, 0, 1],
        ]
        g = [
            [1 / 4, 0, 0],
            [-1 / 6, -1 / 6, -1 / 6],
            [-1 / 6, 1 / 6, -1 / 6],
            [1 / 24, 1 / 12, 1 / 6],
            [1 / 24, -1 / 12, 1 / 6],
            [0, 0, 1],
        ]
        at = [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]]
    else:
        raise ValueError(f"no Winograd transform for {m}x{m} tiles")
    return np.array(bt, float), np.array(g, float), np.array(at, float)


# tile size -> the 2-D transforms as Kronecker matrices: input (a a, a a), weight (a a, 9),
# output (m m, a a), in float64; cast per dtype on use
_KRON = {m: tuple(np.kron(t, t) for t in _matrices(m)) for m in (2, 4)}


def tile_size(channels: int, out_channels: int, outs: tuple[int, ...]) -> int | None:
    """The output tile side to use for a stride-1, undilated, ungrouped 3x3 convolution with
    these channel counts and output size, or None where the direct convolution is faster.

    Measured against the im2col path on a channels-last input (forward at batches 1 and 8,
    forward and both gradients at batch 8; 56 and 14 pixels a side; 16-256 channels each way):
    Winograd took 0.4-0.85 of the time wherever the input had at least 32 channels and the
    output 16 to twice as many (DenseNet's 128 -> 32 growth layers: 38 -> 24 ms at 56x56, batch
    8), and lost with 16 input channels or a wider output (16 -> 128: 1.1-1.5x). With the
    transforms compiled, from ``MIN_CHANNELS_COMPILED`` channels each way."""
    if _compiled(winograd_compiled.tile_transforms, np.float32) is not None:
        wide, narrow = min(channels, out_channels) >= MIN_CHANNELS_COMPILED, False
    else:
        wide = min(channels, out_channels) >= MIN_CHANNELS
        narrow = channels >= MIN_CHANNELS // 2 and MIN_CHANNELS // 4 <= out_channels <= 2 * channels
    if not (wide or narrow) or len(outs) != 2 or min(outs) < MIN_SIZE:
        return None
    return 4 if min(outs) >= MIN_SIZE_FOR_4 else 2


def transform_weights(
    weight: np.ndarray, m: int, out: np.ndarray | None = None, *, rotated: bool = False
) -> np.ndarray:
    """``o c 3 3 -> (a a) c o``: ``G w G^T`` for every channel pair, as one product, in the
    ``(a a) in out`` order the tiles' product reads (a transposed view of an ``(a a) o c``
    result; ``_kept_transform`` in conv.py keeps a contiguous copy of the weights it keeps).

    ``rotated``: transform the kernel that carries the output gradient back to the input
    instead, ``w`` rotated by 180 degrees with its channel axes swapped, ``(a a) o c``: the
    same product with the taps taken in reverse order, so the rotated kernel is never copied.
    """
    o, c = weight.shape[:2]
    kron = _KRON[m][1].astype(weight.dtype)
    if rotated:
        kron = kron[:, ::-1]
    flat = weight.reshape(o * c, 9)
    if out is None:
        out = np.empty((len(kron), o, c), dtype=weight.dtype)
    np.matmul(kron, flat.T, out=out.reshape(len(kron), o * c))
    return out if rotated else out.transpose(0, 2, 1)


Pads = tuple[tuple[int, int], tuple[int, int]]


def _grid(x_shape: tuple, padding: Pads, m: int) -> tuple[tuple[int, int], int, int]:
    """The output size and the tile rows and columns covering it."""
    (top, bottom), (left, right) = padding
    outs = (x_shape[2] + top + bottom - 2, x_shape[3] + left + right - 2)
    return outs, *_tiles_covering(outs, m)


def _tiles_covering(outs: tuple[int, int], m: int) -> tuple[int, int]:
    """The rows and columns of ``m x m`` tiles that cover an output of size ``outs``."""
    return -(-outs[0] // m), -(-outs[1] // m)


def _phases(outs: tuple[int, int], m: int):
    """``(i, j, rows, cols)`` for each position in an output tile: the output pixels
    ``[i::m, j::m]`` are ``rows x cols`` of the ``th x tw`` tiles."""
    for i in range(m):
        for j in range(m):
            yield i, j, len(range(i, outs[0], m)), len(range(j, outs[1], m))


def transformed_tiles(
    x: np.ndarray, padding: Pads, m: int, out: np.ndarray | None = None
) -> np.ndarray:
    """``n c h w -> (a a) (n th tw) c``: ``B^T d B`` for every input tile ``d``, one
    ``(tiles, c)`` matrix per tile position, into ``out`` (default: the scratch slot
    "winograd transformed")."""
    n, c = x.shape[:2]
    a = m + 2
    _, th, tw = _grid(x.shape, padding, m)
    if out is None:
        out = scratch("winograd transformed", tiles_shape(x.shape, padding, m), x.dtype)
    kernel = _compiled(winograd_compiled.tile_transforms, x.dtype)
    if kernel is not None:
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))  # no copy when channels last
        (top, _), (left, _) = padding

        def units(lo: int, hi: int) -> None:
            t, edge = scratch("winograd tile", (2, a, a, c), x.dtype)
            kernel(x, out, t, edge, m, a, top, left, th, tw, lo, hi)

        split(units, n * th, out.size)
        return out
    # the padded input, channels last, grown to whole tiles
    padded = scratch("winograd padded", (n, th * m + 2, tw * m + 2, c), x.dtype)
    pad_last(padded, x, padding)
    # every tile of the padded input, n th tw a a c, as a strided view (no copy): each of
    # the gather's runs is a whole channel vector
    sn, sh, sw, sc = padded.strides
    windows = np.lib.stride_tricks.as_strided(
        padded, (n, th, tw, a, a, c), (sn, m * sh, m * sw, sh, sw, sc), writeable=False
    ).transpose(3, 4, 0, 1, 2, 5)
    d = scratch("winograd tiles", (a, a, n, th, tw, c), x.dtype)
    split(lambda lo, hi: np.copyto(d[:, :, :, lo:hi], windows[:, :, :, lo:hi]), th, d.size)
    np.matmul(_KRON[m][0].astype(x.dtype), d.reshape(a * a, -1), out=out.reshape(a * a, -1))
    return out


def _compiled(kernel, dtype):
    """``kernel`` compiled (``winograd_compiled``) when numba is loaded, for float32 and
    float64; else None: numpy's path."""
    if dtype not in (np.float32, np.float64):
        return None
    return jit.compiled_if_loaded(kernel)


def tiles_shape(x_shape: tuple, padding: Pads, m: int) -> tuple[int, int, int]:
    """The shape of ``transformed_tiles``: ``(a a, n th tw, c)``."""
    _, th, tw = _grid(x_shape, padding, m)
    return ((m + 2) ** 2, x_shape[0] * th * tw, x_shape[1])


def convolve(
    x: np.ndarray,
    transformed: np.ndarray,
    padding: Pads,
    m: int,
    bias: np.ndarray | None,
    tiles_out: np.ndarray | None = None,
) -> np.ndarray:
    """``n c h w -> n o j k``: the stride-1 3x3 convolution of ``x`` padded by ``padding``
    with the ``(a a) c o`` weights ``transformed`` for tile side ``m``, returned channels last
    (an ``n o j k`` view of ``n j k o`` memory). ``x`` may have any layout; channels last
    reads fastest. ``tiles_out``: where to leave the transformed input tiles, for a weight
    gradient to reuse."""
    n = x.shape[0]
    o = transformed.shape[2]
    a = m + 2
    outs, th, tw = _grid(x.shape, padding, m)
    tiles = n * th * tw
    v = transformed_tiles(x, padding, m, tiles_out)
    # the input tiles are dead: their buffer takes the products
    products = scratch("winograd tiles", (a * a, tiles, o), x.dtype)
    stacked_matmul(v, transformed, out=products)  # (a a) tiles c, (a a) c o
    out = np.empty((n, *outs, o), dtype=x.dtype)
    kernel = _compiled(winograd_compiled.output_tiles, x.dtype)
    if kernel is not None:
        values = np.zeros(0, x.dtype) if bias is None else np.ascontiguousarray(bias, x.dtype)

        def units(lo: int, hi: int) -> None:
            u = scratch("winograd tile", (m * a + m * m, o), x.dtype)
            columns, corner = u[: m * a].reshape(m, a, o), u[m * a :].reshape(m, m, o)
            kernel(products, out, columns, corner, values, m, th, tw, lo, hi)

        split(units, n * th, out.size)
        return as_nchw(out)
    y = scratch("winograd transformed", (m * m, tiles * o), x.dtype)
    np.matmul(_KRON[m][2].astype(x.dtype), products.reshape(a * a, tiles * o), out=y)
    y = y.reshape(m, m, n, th, tw, o)

    def scatter(lo: int, hi: int) -> None:
        for i, j, rows, cols in _phases(outs, m):
            target = out[:, i::m, j::m][:, lo:hi]
            source = y[i, j, :, lo : min(hi, rows), :cols]
            if bias is None:
                target[...] = source
            else:
                np.add(source, bias, out=target)

    split(scatter, th, out.size)
    return as_nchw(out)


def weight_gradient(v: np.ndarray, grad: np.ndarray, m: int) -> np.ndarray:
    """``(a a) (n th tw) c, n o j k -> o c 3 3``: the gradient of ``convolve`` with respect to
    the untransformed weights, from the input's ``transformed_tiles`` ``V``, through the same
    transforms backwards: the output gradient's tiles ``dY`` give ``dM = A dY A^T``, each tile
    position's ``dU = dM^T V`` sums over the tiles, and ``dw = G^T dU G``."""
    n, o = grad.shape[:2]
    c = v.shape[2]
    a = m + 2
    outs = grad.shape[2:]
    th, tw = _tiles_covering(outs, m)
    tiles = n * th * tw
    dm = scratch("winograd grad products", (a * a, tiles, o), grad.dtype)
    kernel = _compiled(winograd_compiled.tile_transforms, grad.dtype)
    if kernel is not None:
        g = np.ascontiguousarray(grad.transpose(0, 2, 3, 1))  # no copy when channels last

        def units(lo: int, hi: int) -> None:
            t = scratch("winograd tile", (a * m + m * m, o), grad.dtype)
            columns, edge = t[: a * m].reshape(a, m, o), t[a * m :].reshape(m, m, o)
            kernel(g, dm, columns, edge, m, m, 0, 0, th, tw, lo, hi)

        split(units, n * th, dm.size)
    else:
        _gradient_tiles(grad, dm, m, th, tw)
    # the products go into the gather's scratch slot, dead by now (a fresh 17 MB array per
    # call on layer4 paid ~340 page faults)
    du = scratch("winograd tiles", (a * a, o, c), grad.dtype)
    stacked_matmul(dm.transpose(0, 2, 1), v, out=du)  # (a a) o tiles, (a a) tiles c -> (a a) o c
    # (o c) (a a) @ (a a) 9: the product lands in the weight's own o c 3 3 layout
    dw = np.matmul(du.reshape(a * a, o * c).T, _KRON[m][1].astype(grad.dtype))
    return dw.reshape(o, c, 3, 3)


def _gradient_tiles(grad: np.ndarray, dm: np.ndarray, m: int, th: int, tw: int) -> None:
    """``dm = A dY A^T`` of every ``m x m`` tile of the output gradient, with numpy: the
    tiles cut out (zero past the output's edge), then one product with the Kronecker matrix."""
    n, o = grad.shape[:2]
    outs = grad.shape[2:]
    a = m + 2
    # dY: the output gradient cut into m x m tiles (zero past the output's edge), per position
    dy = scratch("winograd grad tiles", (m, m, n, th, tw, o), grad.dtype)
    source = grad.transpose(0, 2, 3, 1)

    def cut(lo: int, hi: int) -> None:
        for i, j, rows, cols in _phases(outs, m):
            part = dy[i, j, :, lo:hi]
            if hi > rows or cols < tw:
                part[...] = 0
            part[:, : max(0, min(hi, rows) - lo), :cols] = source[:, i::m, j::m][:, lo:hi]

    split(cut, th, dy.size)
    np.matmul(_KRON[m][2].T.astype(grad.dtype), dy.reshape(m * m, -1), out=dm.reshape(a * a, -1))
