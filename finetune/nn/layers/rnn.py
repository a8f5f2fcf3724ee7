"""Recurrent layers ``RNN``, ``LSTM`` and ``GRU`` with PyTorch's constructor, parameter names
(``weight_ih_l0``, ``bias_hh_l1_reverse``, ...), gate order (LSTM i f g o, GRU r z n) and forward.

A layer is composed from the library's tensor functions: one matmul projects the whole input
sequence, then each time step adds the recurrent matmul and applies the gates, so backward
through time comes from the ops' own gradients. ``recur`` runs one direction of one layer and
also serves the ONNX ``LSTM``/``GRU``/``RNN`` converters (activations, clip, peepholes,
``input_forget``, GRU's ``linear_before_reset=0`` and per-sequence lengths).
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ... import functions as fn
from ...errors import ShapeError
from ...tensor import Tensor
from .. import functional as F
from .. import init
from ..module import Module
from ..parameter import Parameter

GATES = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1}


@dataclass(frozen=True)
class Cell:
    """How one step computes: ``f`` the gates (LSTM, GRU) or the RNN's nonlinearity, ``g`` the
    candidate (LSTM cell input, GRU new gate), ``h`` the LSTM's output of the cell; ``clip``
    bounds every gate pre-activation (ONNX); GRU with ``linear_before_reset`` is PyTorch's."""

    mode: str  # "LSTM", "GRU" or "RNN"
    f: Callable = fn.sigmoid
    g: Callable = fn.tanh
    h: Callable = fn.tanh
    clip: float | None = None
    input_forget: bool = False
    linear_before_reset: bool = True


@dataclass(frozen=True)
class Weights:
    """One direction's weights in PyTorch's gate order; ``peepholes`` are ONNX's (p_i, p_f, p_o)."""

    w_ih: Tensor
    w_hh: Tensor
    b_ih: Tensor | None = None
    b_hh: Tensor | None = None
    w_hr: Tensor | None = None
    peepholes: tuple | None = None


def recur(
    cell: Cell,
    x: Tensor,
    weights: Weights,
    h0: Tensor | None = None,
    c0: Tensor | None = None,
    *,
    reverse: bool = False,
    lengths: np.ndarray | None = None,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """One direction of one layer over time-major ``x`` [T, B, I]: returns ``(y, h_n, c_n)``,
    ``y`` [T, B, H_out]. With ``lengths`` [B], sequence b runs over its first ``lengths[b]``
    steps only (backwards from its own end when ``reverse``): ``y`` is zero past its end and
    its final state is the one at its end (zero for an empty sequence, as onnxruntime)."""
    steps, batch = x.shape[0], x.shape[1]
    hidden = weights.w_hh.shape[0] // _CELL_GATES[cell.mode]
    out_size = weights.w_hh.shape[1]
    dtype = x._data.dtype
    h = h0 if h0 is not None else Tensor._from_array(np.zeros((batch, out_size), dtype))
    c = None
    if cell.mode == "LSTM":
        c = c0 if c0 is not None else Tensor._from_array(np.zeros((batch, hidden), dtype))
    valid = _valid_steps(lengths, steps, batch)
    if steps == 0:
        return Tensor._from_array(np.zeros((0, batch, out_size), dtype)), h, c
    step = _STEPS[cell.mode]
    xw, recurrent = _project_input(cell, x, weights)
    pieces = fn.split(xw, batch, dim=0) if steps > 1 else (xw,)
    # steps past the longest sequence change nothing: their outputs are zero
    limit = steps if valid is None else int(valid.any(axis=(1, 2)).sum())
    zeros = Tensor._from_array(np.zeros((batch, out_size), dtype))
    ys = [zeros] * steps
    for t in reversed(range(limit)) if reverse else range(limit):
        h_new, c_new = step(cell, pieces[t], h, c, recurrent, hidden)
        if valid is None:
            h, c, ys[t] = h_new, c_new, h_new
        else:
            keep = valid[t]
            h = fn.where(keep, h_new, h)
            c = fn.where(keep, c_new, c) if c is not None else None
            ys[t] = fn.where(keep, h_new, np.zeros((), dtype))
    if valid is not None and not valid.any(axis=0).all():
        started = valid.any(axis=0)
        h = fn.where(started, h, np.zeros((), dtype))
        c = fn.where(started, c, np.zeros((), dtype)) if c is not None else None
    return fn.stack(ys, dim=0), h, c


def _valid_steps(lengths, steps: int, batch: int) -> np.ndarray | None:
    """[T, B, 1] booleans: which steps of which sequence run (None when all of them do)."""
    if lengths is None:
        return None
    lengths = np.asarray(lengths).reshape(-1)
    if lengths.shape != (batch,) or (lengths < 0).any() or (lengths > steps).any():
        raise ShapeError(
            f"sequence lengths must be {batch} values in [0, {steps}] (one per sequence of the "
            f"batch, at most the sequence length), got {lengths.tolist()}"
        )
    if (lengths == steps).all():
        return None
    return (np.arange(steps)[:, None] < lengths[None, :])[..., None]


def _project_input(cell: Cell, x: Tensor, w: Weights) -> tuple[Tensor, dict]:
    """``x @ w_ih.T`` for every step at once ([T*B, G*H]), with each bias folded in where the
    cell adds it unchanged; returns it and what each step applies to the hidden state."""
    flat = fn.reshape(x, (x.shape[0] * x.shape[1], x.shape[2]))
    if cell.mode == "GRU":
        hidden = w.w_hh.shape[0] // 3
        recurrent = {"w_hh": w.w_hh, "b_hh": w.b_hh}
        if not cell.linear_before_reset:
            w_rz, w_n = fn.split(w.w_hh, [2 * hidden, hidden], dim=0)
            b_rz, b_n = (
                fn.split(w.b_hh, [2 * hidden, hidden]) if w.b_hh is not None else (None,) * 2
            )
            recurrent = {"w_rz": w_rz, "b_rz": b_rz, "w_n": w_n, "b_n": b_n}
        return F.linear(flat, w.w_ih, w.b_ih), recurrent
    bias = w.b_ih if w.b_hh is None else w.b_hh if w.b_ih is None else w.b_ih + w.b_hh
    recurrent = {"w_hh": w.w_hh, "w_hr": w.w_hr, "peepholes": w.peepholes}
    return F.linear(flat, w.w_ih, bias), recurrent


def _clip(x: Tensor, bound: float | None) -> Tensor:
    return x if bound is None else fn.clamp(x, -bound, bound)


def _lstm_step(cell: Cell, xw: Tensor, h: Tensor, c: Tensor, r: dict, hidden: int):
    i, f, g, o = fn.split(xw + F.linear(h, r["w_hh"]), hidden, dim=-1)
    peepholes = r["peepholes"]
    if peepholes is not None:
        p_i, p_f, p_o = peepholes
        i, f = i + p_i * c, f + p_f * c
    i = cell.f(_clip(i, cell.clip))
    f = 1 - i if cell.input_forget else cell.f(_clip(f, cell.clip))
    c = f * c + i * cell.g(_clip(g, cell.clip))
    if peepholes is not None:
        o = o + p_o * c
    h = cell.f(_clip(o, cell.clip)) * cell.h(c)
    if r["w_hr"] is not None:
        h = F.linear(h, r["w_hr"])
    return h, c


def _gru_step(cell: Cell, xw: Tensor, h: Tensor, c, r: dict, hidden: int):
    x_r, x_z, x_n = fn.split(xw, hidden, dim=-1)
    if cell.linear_before_reset:  # n = g(x_n + r * (h @ w_hn.T + b_hn)), PyTorch's GRU
        h_r, h_z, h_n = fn.split(F.linear(h, r["w_hh"], r["b_hh"]), hidden, dim=-1)
        reset = cell.f(_clip(x_r + h_r, cell.clip))
        new = cell.g(_clip(x_n + reset * h_n, cell.clip))
    else:  # n = g(x_n + (r * h) @ w_hn.T + b_hn), ONNX's default
        h_r, h_z = fn.split(F.linear(h, r["w_rz"], r["b_rz"]), hidden, dim=-1)
        reset = cell.f(_clip(x_r + h_r, cell.clip))
        new = cell.g(_clip(x_n + F.linear(reset * h, r["w_n"], r["b_n"]), cell.clip))
    update = cell.f(_clip(x_z + h_z, cell.clip))
    return new + update * (h - new), None


def _rnn_step(cell: Cell, xw: Tensor, h: Tensor, c, r: dict, hidden: int):
    return cell.f(_clip(xw + F.linear(h, r["w_hh"]), cell.clip)), None


_STEPS = {"LSTM": _lstm_step, "GRU": _gru_step, "RNN": _rnn_step}
_CELL_GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}


# -- the modules ---------------------------------------------------------------------------------


class RNNBase(Module):
    """What ``RNN``, ``LSTM`` and ``GRU`` share: stacked layers, each one or two directions."""

    def __init__(
        self,
        mode: str,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        proj_size: int = 0,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        if mode not in GATES:
            raise ValueError(f"Unrecognized RNN mode: {mode}")
        if (
            not isinstance(dropout, numbers.Number)
            or isinstance(dropout, bool)
            or not 0 <= dropout <= 1
        ):
            raise ValueError(
                "dropout should be a number in range [0, 1] representing the probability of an "
                "element being zeroed"
            )
        if dropout > 0 and num_layers == 1:
            warnings.warn(
                "dropout option adds dropout after all but last recurrent layer, so non-zero "
                f"dropout expects num_layers greater than 1, but got dropout={dropout} and "
                f"num_layers={num_layers}",
                stacklevel=2,
            )
        for name, value in (("input_size", input_size), ("hidden_size", hidden_size)):
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"{name} should be of type int, got: {type(value).__name__}")
        if hidden_size <= 0:
            raise ValueError("hidden_size must be greater than zero")
        if num_layers <= 0:
            raise ValueError("num_layers must be greater than zero")
        if proj_size < 0:
            raise ValueError(
                "proj_size should be a positive integer or zero to disable projections"
            )
        if proj_size >= hidden_size:
            raise ValueError("proj_size has to be smaller than hidden_size")
        self.mode = mode
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bias = bias
        self.batch_first = batch_first
        self.dropout = float(dropout)
        self.bidirectional = bidirectional
        self.proj_size = proj_size
        directions = 2 if bidirectional else 1
        gate_size = GATES[mode] * hidden_size
        real_hidden = proj_size if proj_size > 0 else hidden_size
        self._flat_weights_names: list[str] = []
        self._all_weights: list[list[str]] = []
        for layer in range(num_layers):
            layer_input = input_size if layer == 0 else real_hidden * directions
            for direction in range(directions):
                shapes = [(gate_size, layer_input), (gate_size, real_hidden)]
                names = ["weight_ih_l{}{}", "weight_hh_l{}{}"]
                if bias:
                    shapes += [(gate_size,), (gate_size,)]
                    names += ["bias_ih_l{}{}", "bias_hh_l{}{}"]
                if proj_size > 0:
                    shapes.append((proj_size, hidden_size))
                    names.append("weight_hr_l{}{}")
                suffix = "_reverse" if direction == 1 else ""
                names = [n.format(layer, suffix) for n in names]
                for name, shape in zip(names, shapes):
                    setattr(self, name, Parameter(np.empty(shape, dtype=np.float32)))
                self._flat_weights_names.extend(names)
                self._all_weights.append(names)
        self.reset_parameters()
        if dtype is not None:
            self.to(dtype)

    def reset_parameters(self) -> None:
        """Every weight and bias uniform in ``±1/sqrt(hidden_size)``, as PyTorch."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for weight in self.parameters():
            init.uniform_(weight, -bound, bound)

    @property
    def all_weights(self) -> list[list[Parameter]]:
        return [[getattr(self, name) for name in names] for names in self._all_weights]

    def _cell(self) -> Cell:
        if self.mode == "RNN_RELU":
            return Cell("RNN", f=fn.relu)
        if self.mode == "RNN_TANH":
            return Cell("RNN", f=fn.tanh)
        return Cell(self.mode)

    def _weights(self, layer: int, direction: int) -> Weights:
        suffix = f"l{layer}" + ("_reverse" if direction == 1 else "")
        return Weights(
            getattr(self, f"weight_ih_{suffix}"),
            getattr(self, f"weight_hh_{suffix}"),
            getattr(self, f"bias_ih_{suffix}", None) if self.bias else None,
            getattr(self, f"bias_hh_{suffix}", None) if self.bias else None,
            getattr(self, f"weight_hr_{suffix}", None) if self.proj_size > 0 else None,
        )

    def _state_sizes(self) -> tuple[int, int]:
        """(hidden state size, cell state size)."""
        return (self.proj_size or self.hidden_size), self.hidden_size

    def _check_input(self, input: Tensor) -> None:
        if input.ndim not in (2, 3):
            raise ShapeError(
                f"{type(self).__name__}: Expected input to be 2D or 3D, got {input.ndim}D "
                "tensor instead"
            )
        if input.shape[-1] != self.input_size:
            raise ShapeError(
                "input.size(-1) must be equal to input_size. Expected "
                f"{self.input_size}, got {input.shape[-1]}"
            )

    def _check_state(self, state: Tensor, size: int, batch: int, which: str) -> None:
        directions = 2 if self.bidirectional else 1
        expected = [self.num_layers * directions, batch, size]
        if list(state.shape) != expected:
            raise ShapeError(f"Expected {which} size {tuple(expected)}, got {list(state.shape)}")

    def _layers(
        self,
        x: Tensor,
        h0: Tensor | None,
        c0: Tensor | None = None,
        lengths: np.ndarray | None = None,
        reverse: bool = False,
    ) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """Run every layer over time-major ``x``: the last layer's output of each direction
        [T, B, H_out], and the final hidden and cell states of every layer and direction.
        ``reverse`` runs a one-direction module backwards in time (ONNX's ``reverse``)."""
        cell = self._cell()
        directions = 2 if self.bidirectional else 1
        hs, cs, ys = [], [], [x]
        for layer in range(self.num_layers):
            inputs = ys[0] if len(ys) == 1 else fn.cat(ys, dim=-1)
            if layer > 0 and self.training and self.dropout > 0:
                inputs = F.dropout(inputs, self.dropout, training=True)
            ys = []
            for direction in range(directions):
                k = layer * directions + direction
                y, h, c = recur(
                    cell,
                    inputs,
                    self._weights(layer, direction),
                    h0[k] if h0 is not None else None,
                    c0[k] if c0 is not None else None,
                    reverse=reverse or direction == 1,
                    lengths=lengths,
                )
                ys.append(y)
                hs.append(h)
                cs.append(c)
        return ys, hs, cs

    def _forward(self, input: Tensor, hx, has_cell: bool):
        self._check_input(input)
        batched = input.ndim == 3
        if hx is not None:
            states = hx if has_cell else (hx,)
            want = 3 if batched else 2
            if any(s.ndim != want for s in states):
                kind = "batched 3-D" if batched else "unbatched 2-D"
                dims = ", ".join(f"{s.ndim}-D" for s in states)
                which = "hx and cx" if has_cell else "hx"
                raise ShapeError(
                    f"For {kind} input, {which} should also be {want}-D but got {dims}"
                )
            if not batched:
                states = tuple(fn.unsqueeze(s, 1) for s in states)
        x = input if batched else fn.unsqueeze(input, 0 if self.batch_first else 1)
        if self.batch_first:
            x = fn.transpose(x, 0, 1)
        h0 = c0 = None
        if hx is not None:
            h_size, c_size = self._state_sizes()
            h0 = states[0]
            self._check_state(h0, h_size, x.shape[1], "hidden[0]" if has_cell else "hidden")
            if has_cell:
                c0 = states[1]
                self._check_state(c0, c_size, x.shape[1], "hidden[1]")
        ys, hs, cs = self._layers(x, h0, c0)
        output = ys[0] if len(ys) == 1 else fn.cat(ys, dim=-1)
        if self.batch_first:
            output = fn.transpose(output, 0, 1)
        h_n = fn.stack(hs, dim=0)
        c_n = fn.stack(cs, dim=0) if has_cell else None
        if not batched:
            output = fn.squeeze(output, 0 if self.batch_first else 1)
            h_n = fn.squeeze(h_n, 1)
            c_n = fn.squeeze(c_n, 1) if has_cell else None
        return output, ((h_n, c_n) if has_cell else h_n)

    def forward(self, input: Tensor, hx: Tensor | None = None):
        return self._forward(input, hx, has_cell=False)

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if self.proj_size != 0:
            s += f", proj_size={self.proj_size}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        if self.bias is not True:
            s += f", bias={self.bias}"
        if self.batch_first is not False:
            s += f", batch_first={self.batch_first}"
        if self.dropout != 0:
            s += f", dropout={self.dropout}"
        if self.bidirectional is not False:
            s += f", bidirectional={self.bidirectional}"
        return s


class RNN(RNNBase):
    """Elman RNN: ``h_t = tanh(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh)`` (or ReLU)."""

    def __init__(self, *args, **kwargs) -> None:
        if "proj_size" in kwargs:
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        if len(args) > 3:
            nonlinearity = args[3]
            args = args[:3] + args[4:]
        else:
            nonlinearity = kwargs.pop("nonlinearity", "tanh")
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(
                f"Unknown nonlinearity '{nonlinearity}'. Select from 'tanh' or 'relu'."
            )
        super().__init__("RNN_TANH" if nonlinearity == "tanh" else "RNN_RELU", *args, **kwargs)
        self.nonlinearity = nonlinearity

    def forward(self, input: Tensor, hx: Tensor | None = None):
        """``input`` (L, N, H_in), or (N, L, H_in) with ``batch_first``, or unbatched
        (L, H_in); returns ``(output, h_n)``."""
        return self._forward(input, hx, has_cell=False)


class LSTM(RNNBase):
    """Long short-term memory; gates in PyTorch's order i, f, g, o; ``proj_size`` projects h."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__("LSTM", *args, **kwargs)

    def forward(self, input: Tensor, hx: tuple[Tensor, Tensor] | None = None):
        """``hx`` is ``(h_0, c_0)``; returns ``(output, (h_n, c_n))``."""
        if hx is not None and (not isinstance(hx, (tuple, list)) or len(hx) != 2):
            raise ShapeError("LSTM expects hx as a tuple (h_0, c_0)")
        return self._forward(input, hx, has_cell=True)


class GRU(RNNBase):
    """Gated recurrent unit; gates in PyTorch's order r, z, n (ONNX's ``linear_before_reset=1``)."""

    def __init__(self, *args, **kwargs) -> None:
        if "proj_size" in kwargs:
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        super().__init__("GRU", *args, **kwargs)

    def forward(self, input: Tensor, hx: Tensor | None = None):
        """``input`` (L, N, H_in), or (N, L, H_in) with ``batch_first``, or unbatched
        (L, H_in); returns ``(output, h_n)``."""
        return self._forward(input, hx, has_cell=False)
