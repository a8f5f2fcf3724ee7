"""LSTM, GRU and RNN (every schema from opset 1): forward, reverse and bidirectional, ``layout``
0 and 1, initial states, ``sequence_lens``, ``clip``, the activation list with its alphas and
betas, LSTM peepholes and ``input_forget``, GRU ``linear_before_reset``.

With constant weights, the default activations, no clip, no peepholes, no ``input_forget`` and
(GRU) ``linear_before_reset=1``, a node becomes a real ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN``
with its weights re-ordered into PyTorch's gate order, so it can be fine-tuned under PyTorch's
parameter names. Otherwise it runs functionally (GRU with ``linear_before_reset=0`` among
them: PyTorch's GRU has no such mode); its constant weights are still trainable parameters of
the imported graph. Both paths run ``nn.layers.rnn.recur``; onnxruntime's CPU kernels are the
reference where the spec is silent (clip bounds every gate pre-activation, an empty sequence
has zero final states).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ... import functions as fn
from ...errors import OnnxImportError, ShapeError
from ...nn import functional as F
from ...nn.layers.rnn import GRU, LSTM, RNN, Cell, Weights, recur
from ...nn.parameter import Parameter
from ...tensor import Tensor
from ..registry import Built, NodeView, register

# ONNX's gate blocks, listed in PyTorch's gate order: LSTM i o f c -> i f g o, GRU z r h -> r z n
_TO_TORCH = {"LSTM": (0, 2, 3, 1), "GRU": (1, 0, 2), "RNN": (0,)}
_GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
_DEFAULT_ACTIVATIONS = {
    "LSTM": ("sigmoid", "tanh", "tanh"),
    "GRU": ("sigmoid", "tanh"),
    "RNN": ("tanh",),
}
_DIRECTIONS = {
    "forward": 1,
    "foward": 1,
    "reverse": 1,
    "bidirectional": 2,
}  # GRU-1's default: "foward"


# -- activations ---------------------------------------------------------------------------------


def _affine(x, alpha, beta):
    return x * alpha + beta


def _leaky_relu(x, alpha, beta):
    return F.leaky_relu(x, alpha)


def _thresholded_relu(x, alpha, beta):
    return fn.where(x._data > alpha, x, np.zeros((), x._data.dtype))


def _scaled_tanh(x, alpha, beta):
    return fn.tanh(x * beta) * alpha


def _hard_sigmoid(x, alpha, beta):
    return fn.clamp(x * alpha + beta, 0.0, 1.0)


def _elu(x, alpha, beta):
    # exp of min(x, 0): the branch where does not pick must stay finite for the gradient
    negative = (fn.exp(fn.clamp(x, None, 0.0)) - 1) * alpha
    return fn.where(x._data >= 0, x, negative)


def _softsign(x, alpha, beta):
    return x / (fn.abs(x) + 1)


def _softplus(x, alpha, beta):
    # log(1 + e^x) written so that e^x cannot overflow
    return fn.relu(x) + fn.log1p(fn.exp(-fn.abs(x)))


# name -> (function, default alpha, default beta); None: the activation takes no such value.
# Defaults are the ONNX operators' (spec); ScaledTanh's op had none, so onnxruntime's 0 is kept.
_ACTIVATIONS: dict[str, tuple[Callable, float | None, float | None]] = {
    "relu": (lambda x, a, b: fn.relu(x), None, None),
    "tanh": (lambda x, a, b: fn.tanh(x), None, None),
    "sigmoid": (lambda x, a, b: fn.sigmoid(x), None, None),
    "affine": (_affine, 1.0, 0.0),
    "leakyrelu": (_leaky_relu, 0.01, None),
    "thresholdedrelu": (_thresholded_relu, 1.0, None),
    "scaledtanh": (_scaled_tanh, 0.0, 0.0),
    "hardsigmoid": (_hard_sigmoid, 0.2, 0.5),
    "elu": (_elu, 1.0, None),
    "softsign": (_softsign, None, None),
    "softplus": (_softplus, None, None),
}


@dataclass(frozen=True)
class _Activation:
    name: str
    alpha: float | None
    beta: float | None

    def __call__(self, x: Tensor) -> Tensor:
        return _ACTIVATIONS[self.name][0](x, self.alpha, self.beta)


def _activations(op: str, directions: int, names, alphas, betas) -> list[tuple[_Activation, ...]]:
    """One tuple of activations per direction. Alphas and betas are consumed in list order by
    the activations that take them (onnxruntime's reading of the spec)."""
    per_direction = len(_DEFAULT_ACTIVATIONS[op])
    names = [n.lower() for n in (names or _DEFAULT_ACTIVATIONS[op] * directions)]
    if op == "RNN" and len(names) == 2 and directions == 1:
        names = names[:1]  # the schema's default lists "Tanh" twice, for either direction count
    if len(names) == per_direction and directions == 2:
        names = names * 2
    if len(names) != per_direction * directions:
        raise ShapeError(
            f"{op} with {directions} direction(s) takes {per_direction * directions} "
            f"activations, got {len(names)}: {names}"
        )
    unknown = [n for n in names if n not in _ACTIVATIONS]
    if unknown:
        raise ShapeError(f"{op}: unknown activation(s) {unknown}; known: {sorted(_ACTIVATIONS)}")
    alphas, betas = list(alphas or ()), list(betas or ())
    parsed = []
    for name in names:
        _, alpha, beta = _ACTIVATIONS[name]
        if alpha is not None and alphas:
            alpha = float(alphas.pop(0))
        if beta is not None and betas:
            beta = float(betas.pop(0))
        parsed.append(_Activation(name, alpha, beta))
    return [tuple(parsed[d * per_direction : (d + 1) * per_direction]) for d in range(directions)]


# -- sizes -----------------------------------------------------------------------------------------


def _check_sizes(op, w_shape, r_shape, b_shape, p_shape, hidden_size, direction) -> tuple[int, int]:
    """(directions, hidden size) after checking W, R, B and P against each other and the
    attributes; ShapeError saying which input is off."""
    if direction not in _DIRECTIONS:
        raise ShapeError(
            f"{op}: direction must be 'forward', 'reverse' or 'bidirectional', got {direction!r}"
        )
    directions, gates = _DIRECTIONS[direction], _GATES[op]
    if len(r_shape) != 3:
        raise ShapeError(f"{op}: R must be [num_directions, {gates}*hidden, hidden], got {r_shape}")
    hidden = r_shape[2] if hidden_size is None else int(hidden_size)
    want = {
        "W": (w_shape, [directions, gates * hidden, w_shape[-1] if w_shape else None]),
        "R": (r_shape, [directions, gates * hidden, hidden]),
        "B": (b_shape, [directions, 2 * gates * hidden]),
        "P": (p_shape, [directions, 3 * hidden]),
    }
    for name, (got, expected) in want.items():
        if got is not None and list(got) != expected:
            raise ShapeError(
                f"{op} with direction={direction!r} and hidden_size={hidden}: input {name} must "
                f"have shape {expected} ([num_directions, ...]), got {list(got)}"
            )
    return directions, hidden


def _layout(op: str, attributes: dict) -> int:
    layout = attributes.get("layout", 0)
    if layout not in (0, 1):
        raise ShapeError(
            f"{op}: layout must be 0 (sequence first) or 1 (batch first), got {layout}"
        )
    return layout


def _shape(t) -> list | None:
    return None if t is None else list(t.shape)


# -- the functional path -------------------------------------------------------------------------


def _reorder(t: Tensor, op: str, hidden: int) -> Tensor:
    """ONNX gate blocks along dim 0 -> PyTorch's order."""
    if op == "RNN":
        return t
    blocks = fn.split(t, hidden, dim=0)
    return fn.cat([blocks[i] for i in _TO_TORCH[op]], dim=0)


def _direction_weights(op, W, R, B, P, d: int, hidden: int) -> Weights:
    gates = _GATES[op]
    b_ih = b_hh = peepholes = None
    if B is not None:
        b_ih, b_hh = (_reorder(b, op, hidden) for b in fn.split(B[d], gates * hidden, dim=0))
    if P is not None:
        p_i, p_o, p_f = fn.split(P[d], hidden, dim=0)
        peepholes = (p_i, p_f, p_o)
    return Weights(
        _reorder(W[d], op, hidden), _reorder(R[d], op, hidden), b_ih, b_hh, None, peepholes
    )


def _time_major(layout: int, X, initial_h, initial_c):
    if layout == 0:
        return X, initial_h, initial_c
    # layout 1: X [batch, seq, input], states [batch, directions, hidden]
    swap = [None if t is None else fn.transpose(t, 0, 1) for t in (X, initial_h, initial_c)]
    return tuple(swap)


def _lengths(sequence_lens: Tensor | None) -> np.ndarray | None:
    return None if sequence_lens is None else np.asarray(sequence_lens._data).astype(np.int64)


def _onnx_outputs(layout: int, ys, hs, cs):
    """Y [seq, dirs, batch, hidden] (layout 1: [batch, seq, dirs, hidden]), Y_h and Y_c
    [dirs, batch, hidden] (layout 1: [batch, dirs, hidden])."""
    y = fn.stack(ys, dim=1)
    h = fn.stack(hs, dim=0)
    c = fn.stack(cs, dim=0) if cs[0] is not None else None
    if layout == 1:
        y = fn.permute(y, 2, 0, 1, 3)
        h = fn.transpose(h, 0, 1)
        c = fn.transpose(c, 0, 1) if c is not None else None
    return (y, h, c) if c is not None else (y, h)


def _run(op, X, W, R, B, sequence_lens, initial_h, initial_c, P, a: dict):
    if X.ndim != 3:
        raise ShapeError(f"{op}: X must be 3-D, got shape {list(X.shape)}")
    directions, hidden = _check_sizes(
        op, _shape(W), _shape(R), _shape(B), _shape(P), a["hidden_size"], a["direction"]
    )
    layout = _layout(op, a)
    x, h0, c0 = _time_major(layout, X, initial_h, initial_c)
    if W.shape[2] != x.shape[2]:
        raise ShapeError(f"{op}: W expects {W.shape[2]} input features, X has {x.shape[2]}")
    for name, state in (("initial_h", h0), ("initial_c", c0)):
        if state is not None and list(state.shape) != [directions, x.shape[1], hidden]:
            raise ShapeError(
                f"{op}: {name} must be [num_directions={directions}, batch={x.shape[1]}, "
                f"hidden={hidden}] (layout {layout} order), got {list(state.shape)}"
            )
    activations = _activations(
        op, directions, a["activations"], a["activation_alpha"], a["activation_beta"]
    )
    lengths = _lengths(sequence_lens)
    ys, hs, cs = [], [], []
    for d in range(directions):
        f, *rest = activations[d]
        cell = Cell(
            op,
            f=f,
            g=rest[0] if rest else fn.tanh,
            h=rest[1] if len(rest) > 1 else fn.tanh,
            clip=a["clip"],
            input_forget=bool(a.get("input_forget", 0)),
            linear_before_reset=bool(a.get("linear_before_reset", 0)),
        )
        y, h, c = recur(
            cell,
            x,
            _direction_weights(op, W, R, B, P, d, hidden),
            h0[d] if h0 is not None else None,
            c0[d] if c0 is not None else None,
            reverse=a["direction"] == "reverse" or d == 1,
            lengths=lengths,
        )
        ys.append(y)
        hs.append(h)
        cs.append(c)
    return _onnx_outputs(layout, ys, hs, cs)


# -- the module path -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _CallModule:
    """Runs an ``nn.LSTM``/``nn.GRU``/``nn.RNN`` on the node's X, sequence_lens and initial
    states, and returns ONNX's outputs."""

    layout: int
    reverse: bool

    def __call__(self, module, X, sequence_lens=None, initial_h=None, initial_c=None):
        x, h0, c0 = _time_major(self.layout, X, initial_h, initial_c)
        if x.ndim != 3 or x.shape[2] != module.input_size:
            raise ShapeError(
                f"{type(module).__name__}: X must be 3-D with {module.input_size} features, "
                f"got shape {list(X.shape)}"
            )
        directions = 2 if module.bidirectional else 1
        for name, state in (("initial_h", h0), ("initial_c", c0)):
            if state is not None and list(state.shape) != [
                directions,
                x.shape[1],
                module.hidden_size,
            ]:
                raise ShapeError(
                    f"{type(module).__name__}: {name} must be [{directions}, {x.shape[1]}, "
                    f"{module.hidden_size}] (layout {self.layout} order), got {list(state.shape)}"
                )
        ys, hs, cs = module._layers(x, h0, c0, _lengths(sequence_lens), self.reverse)
        return _onnx_outputs(self.layout, ys, hs, cs if isinstance(module, LSTM) else [None])


def _module(op: str, view: NodeView) -> Built | None:
    a = {**_ATTRIBUTE_DEFAULTS, **view.attributes}
    W, R = view.constant(1), view.constant(2)
    B = view.constant(3) if view.has_input(3) else None
    P = view.constant(7) if view.has_input(7) else None
    name = view.node.name
    try:
        _layout(op, a)
        if W is not None and R is not None:
            _check_sizes(
                op,
                list(W.shape),
                list(R.shape),
                _shape(B),
                _shape(P),
                a["hidden_size"],
                a["direction"],
            )
        activations = _activations(
            op,
            _DIRECTIONS.get(a["direction"], 1),
            a["activations"],
            a["activation_alpha"],
            a["activation_beta"],
        )
    except ShapeError as error:
        raise OnnxImportError(f"{op} node {name!r}: {error}") from None
    per_direction = {tuple(act.name for act in acts) for acts in activations}
    plain = per_direction in ({_DEFAULT_ACTIVATIONS[op]}, *([{("relu",)}] if op == "RNN" else []))
    if (
        W is None
        or R is None
        or W.dtype.kind != "f"
        or (view.has_input(3) and B is None)
        or view.has_input(7)
        or not plain
        or a["clip"] is not None
        or a.get("input_forget", 0)
        or (op == "GRU" and not a.get("linear_before_reset", 0))
    ):
        return None
    directions, hidden = W.shape[0], R.shape[2]
    kind = {"LSTM": LSTM, "GRU": GRU, "RNN": RNN}[op]
    extra = {"nonlinearity": per_direction.pop()[0]} if op == "RNN" else {}
    layer = kind(
        W.shape[2],
        hidden,
        bias=B is not None,
        batch_first=a.get("layout", 0) == 1,
        bidirectional=directions == 2,
        **extra,
    )
    order = [i for block in _TO_TORCH[op] for i in range(block * hidden, (block + 1) * hidden)]
    gates = _GATES[op] * hidden
    for d in range(directions):
        suffix = "l0_reverse" if d == 1 else "l0"
        values = {"weight_ih": W[d][order], "weight_hh": R[d][order]}
        if B is not None:
            values["bias_ih"], values["bias_hh"] = B[d][:gates][order], B[d][gates:][order]
        for key, value in values.items():
            setattr(layer, f"{key}_{suffix}", Parameter(np.ascontiguousarray(value)))
    return Built(layer, (0, 4, 5, 6), _CallModule(a.get("layout", 0), a["direction"] == "reverse"))


_ATTRIBUTE_DEFAULTS = {
    "activation_alpha": None,
    "activation_beta": None,
    "activations": None,
    "clip": None,
    "direction": "forward",
    "hidden_size": None,
}


# -- the converters ------------------------------------------------------------------------------


@register("LSTM", 1, 7, 14, 22, module=lambda view: _module("LSTM", view))
def lstm(
    X: Tensor,
    W: Tensor,
    R: Tensor,
    B: Tensor | None = None,
    sequence_lens: Tensor | None = None,
    initial_h: Tensor | None = None,
    initial_c: Tensor | None = None,
    P: Tensor | None = None,
    *,
    activation_alpha=None,
    activation_beta=None,
    activations=None,
    clip=None,
    direction="forward",
    hidden_size=None,
    input_forget=0,
    layout=0,
    output_sequence=0,
):
    """Returns (Y, Y_h, Y_c); ``output_sequence`` (opset 1) only said whether Y is wanted."""
    a = dict(locals())
    return _run("LSTM", X, W, R, B, sequence_lens, initial_h, initial_c, P, a)


@register("GRU", 1, 3, 7, 14, 22, module=lambda view: _module("GRU", view))
def gru(
    X: Tensor,
    W: Tensor,
    R: Tensor,
    B: Tensor | None = None,
    sequence_lens: Tensor | None = None,
    initial_h: Tensor | None = None,
    *,
    activation_alpha=None,
    activation_beta=None,
    activations=None,
    clip=None,
    direction="forward",
    hidden_size=None,
    layout=0,
    linear_before_reset=0,
    output_sequence=0,
):
    """Returns (Y, Y_h)."""
    a = dict(locals())
    return _run("GRU", X, W, R, B, sequence_lens, initial_h, None, None, a)


@register("RNN", 1, 7, 14, 22, module=lambda view: _module("RNN", view))
def rnn(
    X: Tensor,
    W: Tensor,
    R: Tensor,
    B: Tensor | None = None,
    sequence_lens: Tensor | None = None,
    initial_h: Tensor | None = None,
    *,
    activation_alpha=None,
    activation_beta=None,
    activations=("Tanh", "Tanh"),
    clip=None,
    direction="forward",
    hidden_size=None,
    layout=0,
    output_sequence=0,
):
    """Returns (Y, Y_h)."""
    a = dict(locals())
    return _run("RNN", X, W, R, B, sequence_lens, initial_h, None, None, a)
