"""Transformer ops: Attention (with masks, caches, GQA, softcap), RotaryEmbedding, SwiGLU,
LinearAttention and CausalConvWithState.

All are composed of matmul, softmax, where, slicing and elementwise tensor ops, so gradients
reach every float input. Masks (bool, causal, window, padding) are built in numpy as one
additive bias; a float ``attn_mask`` is added as a tensor, so it is trainable too.
"""

from __future__ import annotations

import math

import numpy as np
import onnx

from ... import functions as fn
from ...errors import OnnxImportError, ShapeError
from ...tensor import Tensor
from ..registry import register
from ._common import keep_dtype, wrap


def _split_heads(x: Tensor, heads: int | None, what: str) -> Tensor:
    """``(B, S, H*D) -> (B, H, S, D)``."""
    if not heads or x.shape[2] % heads:
        raise ShapeError(
            f"Attention: 3-D {what} of shape {list(x.shape)} needs q_num_heads/kv_num_heads "
            f"attributes dividing its last dimension, got {heads}"
        )
    b, s, hidden = x.shape
    return fn.transpose(fn.reshape(x, (b, s, heads, hidden // heads)), 1, 2)


def _repeat_heads(x: Tensor, times: int) -> Tensor:
    """Each head of ``(B, H, S, D)`` repeated ``times`` times in place: h0 h0 h1 h1 ..."""
    if times == 1:
        return x
    b, h, s, d = x.shape
    return fn.reshape(fn.expand(fn.unsqueeze(x, 2), (b, h, times, s, d)), (b, h * times, s, d))


def _allowed_bias(allowed: np.ndarray, dtype: np.dtype) -> np.ndarray:
    return np.where(allowed, dtype.type(0), dtype.type(-np.inf))


def _position_bias(q_len, kv_len, offset, is_causal, left, right, dtype) -> np.ndarray | None:
    """The causal and sliding-window bias, ``(q, kv)`` or per batch ``(B, 1, q, kv)`` when
    ``offset`` (the count of keys before the query block) is per batch."""
    if not is_causal and left < 0 and right < 0:
        return None
    i = np.arange(q_len)[:, None]
    j = np.arange(kv_len)[None, :]
    position = i + (np.reshape(offset, (-1, 1, 1, 1)) if np.ndim(offset) else int(offset))
    allowed = np.ones(np.broadcast_shapes(position.shape, j.shape), bool)
    if is_causal:
        allowed &= j <= position
    if left >= 0:
        allowed &= position - j <= left
    if right >= 0:
        allowed &= j - position <= right
    return _allowed_bias(allowed, dtype)


def _mask_bias(mask: Tensor, kv_len: int, dtype: np.dtype) -> Tensor:
    """``attn_mask`` as an additive bias over all ``kv_len`` keys: a bool mask becomes 0/-inf,
    a float mask stays a tensor; a shorter mask's missing keys are masked."""
    missing = kv_len - mask.shape[-1]
    if missing < 0:
        raise ShapeError(
            f"Attention: attn_mask of shape {list(mask.shape)} covers more than the {kv_len} keys"
        )
    if mask._data.dtype == np.bool_:
        allowed = mask._data
        if missing:
            pad = [(0, 0)] * (allowed.ndim - 1) + [(0, missing)]
            allowed = np.pad(allowed, pad, constant_values=False)
        return wrap(_allowed_bias(allowed, dtype))
    if missing:
        fill = wrap(np.full((*mask.shape[:-1], missing), -np.inf, mask._data.dtype))
        mask = fn.cat([mask, fill], -1)
    return keep_dtype(mask, dtype)


def _softcapped(x: Tensor, softcap: float) -> Tensor:
    if softcap <= 0:
        return x
    return fn.mul(fn.tanh(fn.div(x, softcap)), softcap)


def _guarded_softmax(logits: Tensor, bias: np.ndarray | None, dtype: np.dtype) -> Tensor:
    """Softmax over keys; a query row whose bias masks every key gives zeros, not NaN (the
    spec's errata). Such rows see a zero bias inside the softmax, so no NaN reaches backward."""
    if bias is None:
        return fn.softmax(logits, -1)
    dead = np.isneginf(np.max(bias, axis=-1, keepdims=True))
    if not dead.any():
        return fn.softmax(logits, -1)
    safe = fn.where(wrap(dead), wrap(np.zeros((), logits._data.dtype)), logits)
    return fn.where(wrap(dead), wrap(np.zeros((), dtype)), fn.softmax(safe, -1))


@register("Attention", 23, 24, 25)
def attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    attn_mask: Tensor | None = None,
    past_key: Tensor | None = None,
    past_value: Tensor | None = None,
    nonpad_kv_seqlen: Tensor | None = None,
    *,
    is_causal=0,
    kv_num_heads=None,
    q_num_heads=None,
    qk_matmul_output_mode=0,
    scale=None,
    softcap=0.0,
    softmax_precision=None,
    left_window_size=-1,
    right_window_size=-1,
    _outputs=1,
) -> Tensor | tuple[Tensor, ...]:
    """Scaled dot-product attention over ``(B, H, S, D)`` or ``(B, S, H*D)`` inputs. Returns Y
    and, when asked, present_key/value (past + new, 4-D) and the ``qk_matmul_output_mode``
    intermediate (0 raw scores, 1 softcapped, 2 plus bias, 3 probabilities)."""
    if not q.ndim == k.ndim == v.ndim or q.ndim not in (3, 4):
        raise ShapeError(
            f"Attention: Q, K and V must all be 3-D or all 4-D, got shapes {list(q.shape)}, "
            f"{list(k.shape)}, {list(v.shape)}"
        )
    if (past_key is None) != (past_value is None):
        raise OnnxImportError("Attention: past_key and past_value must be given together")
    if nonpad_kv_seqlen is not None and past_key is not None:
        raise OnnxImportError("Attention: nonpad_kv_seqlen cannot be combined with past_key")
    packed = q.ndim == 3
    if packed:
        q = _split_heads(q, q_num_heads, "Q")
        k = _split_heads(k, kv_num_heads, "K")
        v = _split_heads(v, kv_num_heads, "V")
    dtype = q._data.dtype
    batch, heads, q_len, head_size = q.shape
    if k.shape[1] != v.shape[1] or heads % k.shape[1] or k.shape[3] != head_size:
        raise ShapeError(
            f"Attention: {heads} query heads of size {head_size} do not fit K of shape "
            f"{list(k.shape)} and V of shape {list(v.shape)} (heads must divide evenly)"
        )
    if past_key is not None:
        k, v = fn.cat([past_key, k], 2), fn.cat([past_value, v], 2)
    present_key, present_value = k, v
    kv_len = k.shape[2]

    if nonpad_kv_seqlen is not None:
        lengths = np.asarray(nonpad_kv_seqlen._data).reshape(-1).astype(np.int64)
        offset = lengths - q_len
    else:
        lengths, offset = None, past_key.shape[2] if past_key is not None else 0
    bias = _position_bias(
        q_len, kv_len, offset, is_causal, left_window_size, right_window_size, dtype
    )
    if lengths is not None:
        padding = _allowed_bias(np.arange(kv_len) < lengths[:, None], dtype)
        padding = padding.reshape(batch, 1, 1, kv_len)
        bias = padding if bias is None else bias + padding
    mask = None if attn_mask is None else _mask_bias(attn_mask, kv_len, dtype)
    if mask is not None and mask.requires_grad:
        guard = mask._data if bias is None else mask._data + bias
    elif mask is not None:  # a constant mask joins the numpy bias
        bias = mask._data if bias is None else mask._data + bias
        mask = None
        guard = bias
    else:
        guard = bias

    factor = dtype.type(math.sqrt(1 / math.sqrt(head_size) if scale is None else scale))
    k = _repeat_heads(k, heads // k.shape[1])
    v = _repeat_heads(v, heads // v.shape[1])
    scores = fn.matmul(fn.mul(q, factor), fn.transpose(fn.mul(k, factor), 2, 3))
    raw = scores
    scores = _softcapped(scores, softcap)
    if bias is not None:
        scores = fn.add(scores, wrap(bias))
    if mask is not None:
        scores = fn.add(scores, mask)
    logits = scores
    if softmax_precision is not None:
        logits = keep_dtype(logits, onnx.helper.tensor_dtype_to_np_dtype(softmax_precision))
    probs = keep_dtype(_guarded_softmax(logits, guard, logits._data.dtype), dtype)
    y = fn.matmul(probs, v)
    if packed:
        y = fn.reshape(fn.transpose(y, 1, 2), (batch, q_len, -1))
    if _outputs <= 3:
        return (y, present_key, present_value)[:_outputs]
    modes = {0: raw, 1: _softcapped(raw, softcap), 2: scores, 3: probs}
    if qk_matmul_output_mode not in modes:
        raise OnnxImportError(
            f"Attention: qk_matmul_output_mode must be 0, 1, 2 or 3, got {qk_matmul_output_mode}"
        )
    return y, present_key, present_value, keep_dtype(modes[qk_matmul_output_mode], dtype)


@register("RotaryEmbedding", 23)
def rotary_embedding(
    x: Tensor,
    cos_cache: Tensor,
    sin_cache: Tensor,
    position_ids: Tensor | None = None,
    *,
    interleaved=0,
    num_heads=0,
    rotary_embedding_dim=0,
) -> Tensor:
    """Rotate the first ``rotary_embedding_dim`` features of each head by the cached angles:
    halves ``(x1, x2)`` (or even/odd pairs when ``interleaved``) become
    ``(cos x1 - sin x2, sin x1 + cos x2)``."""
    shape = tuple(x.shape)
    if x.ndim == 4:  # b h s d -> b s h d
        x = fn.transpose(x, 1, 2)
    elif x.ndim == 3:
        if not num_heads or shape[2] % num_heads:
            raise ShapeError(
                f"RotaryEmbedding: 3-D input of shape {list(shape)} needs num_heads dividing "
                f"its last dimension, got {num_heads}"
            )
        x = fn.reshape(x, (shape[0], shape[1], num_heads, shape[2] // num_heads))
    else:
        raise ShapeError(f"RotaryEmbedding: input must be 3-D or 4-D, got {list(shape)}")
    head_size = x.shape[3]
    dim = rotary_embedding_dim or head_size
    if dim > head_size or dim % 2:
        raise ShapeError(
            f"RotaryEmbedding: rotary_embedding_dim {dim} must be even and at most the head "
            f"size {head_size}"
        )
    if position_ids is not None:
        ids = np.asarray(position_ids._data).astype(np.int64)
        rows = cos_cache.shape[0]
        if ids.size and (ids.min() < 0 or ids.max() >= rows):
            raise ShapeError(
                f"RotaryEmbedding: position_ids span [{ids.min()}, {ids.max()}], the caches "
                f"hold {rows} positions"
            )
        flat = wrap(ids.reshape(-1))
        cos = fn.reshape(fn.index_select(cos_cache, 0, flat), (*ids.shape, -1))
        sin = fn.reshape(fn.index_select(sin_cache, 0, flat), (*ids.shape, -1))
    else:
        cos, sin = cos_cache, sin_cache
    if cos.shape != (x.shape[0], x.shape[1], dim // 2) or sin.shape != cos.shape:
        raise ShapeError(
            f"RotaryEmbedding: cos/sin caches give shape {list(cos.shape)}, expected "
            f"[{x.shape[0]}, {x.shape[1]}, {dim // 2}] (batch, sequence, rotary dim / 2)"
        )
    cos, sin = fn.unsqueeze(cos, 2), fn.unsqueeze(sin, 2)  # b s 1 r/2
    rotated, kept = x[..., :dim], x[..., dim:]
    if interleaved:
        x1, x2 = rotated[..., 0::2], rotated[..., 1::2]
    else:
        x1, x2 = rotated[..., : dim // 2], rotated[..., dim // 2 :]
    real = fn.sub(fn.mul(cos, x1), fn.mul(sin, x2))
    imag = fn.add(fn.mul(sin, x1), fn.mul(cos, x2))
    if interleaved:
        rotated = fn.reshape(fn.stack([real, imag], -1), tuple(rotated.shape))
    else:
        rotated = fn.cat([real, imag], -1)
    out = fn.cat([rotated, kept], -1) if dim < head_size else rotated
    return fn.reshape(out, shape) if len(shape) == 3 else fn.transpose(out, 1, 2)


@register("SwiGLU", 28)
def swiglu(a: Tensor, b: Tensor, *, alpha=1.0) -> Tensor:
    """``a * sigmoid(alpha * a) * b``; the gate and value have one shape (no broadcasting)."""
    if a.shape != b.shape:
        raise ShapeError(
            f"SwiGLU: gate A {list(a.shape)} and value B {list(b.shape)} must have one shape"
        )
    return fn.mul(fn.mul(a, fn.sigmoid(fn.mul(a, alpha))), b)


def _compute(dtype: np.dtype) -> np.dtype:
    """float16 is computed in float32, as the reference kernels do."""
    return np.dtype(np.float32) if dtype.itemsize < 4 else dtype


@register("CausalConvWithState", 27)
def causal_conv_with_state(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    past_state: Tensor | None = None,
    *,
    activation="none",
) -> tuple[Tensor, Tensor]:
    """Depthwise causal 1-D convolution of ``(B, C, L)`` input with ``(C, 1, K)`` weights, the
    ``K - 1`` positions before it from ``past_state`` (zeros without one); returns the output
    and the new state (the last ``K - 1`` positions)."""
    if activation not in ("none", "silu", "swish"):
        raise OnnxImportError(
            f"CausalConvWithState: activation must be 'none', 'silu' or 'swish', got {activation!r}"
        )
    if x.ndim != 3 or weight.ndim != 3 or weight.shape[:2] != (x.shape[1], 1):
        raise ShapeError(
            f"CausalConvWithState: input (B, C, L) and weight (C, 1, K) expected, got "
            f"{list(x.shape)} and {list(weight.shape)}"
        )
    batch, channels, length = x.shape
    taps = weight.shape[2]
    dtype = x._data.dtype
    if past_state is None:
        past_state = wrap(np.zeros((batch, channels, taps - 1), dtype))
    elif tuple(past_state.shape) != (batch, channels, taps - 1):
        raise ShapeError(
            f"CausalConvWithState: past_state must be {[batch, channels, taps - 1]}, got "
            f"{list(past_state.shape)}"
        )
    padded = fn.cat([past_state, x], 2)
    compute = _compute(dtype)
    wide, w = keep_dtype(padded, compute), keep_dtype(weight, compute)
    out = None
    for tap in range(taps):  # b c l, c 1 -> b c l
        term = fn.mul(wide[:, :, tap : tap + length], w[:, :, tap])
        out = term if out is None else fn.add(out, term)
    if bias is not None:
        out = fn.add(out, fn.reshape(keep_dtype(bias, compute), (channels, 1)))
    out = keep_dtype(out, dtype)
    if activation != "none":
        wide_out = keep_dtype(out, compute)
        out = keep_dtype(fn.mul(wide_out, fn.sigmoid(wide_out)), dtype)
    return out, padded[:, :, length:]


_UPDATE_RULES = ("linear", "gated", "delta", "gated_delta")


def _per_head(x: Tensor, heads: int, name: str) -> Tensor:
    """A 3-D ``(B, T, heads*k)`` or ``(B, T, heads)`` input as ``(B, heads, T, k)``."""
    if x.ndim != 3 or x.shape[2] % heads:
        raise ShapeError(
            f"LinearAttention: {name} of shape {list(x.shape)} must be (B, T, {heads}*k)"
        )
    return _split_heads(x, heads, name)


@register("LinearAttention", 27)
def linear_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    past_state: Tensor | None = None,
    decay: Tensor | None = None,
    beta: Tensor | None = None,
    *,
    chunk_size=64,
    kv_num_heads,
    q_num_heads,
    scale=0.0,
    update_rule="gated_delta",
) -> tuple[Tensor, Tensor]:
    """The linear-attention recurrence run token by token (``chunk_size`` is a GPU tuning hint
    that changes nothing here): a ``(B, H_kv, d_k, d_v)`` state, decayed by ``exp(decay)``
    (gated rules) and updated with ``k v^T`` or the delta rule's ``beta k (v - S^T k)^T``;
    each query reads ``scale * q^T S``. Computed in float32 (float64 stays float64)."""
    if update_rule not in _UPDATE_RULES:
        raise OnnxImportError(
            f"LinearAttention: update_rule must be one of {_UPDATE_RULES}, got {update_rule!r}"
        )
    if q_num_heads <= 0 or kv_num_heads <= 0 or q_num_heads % kv_num_heads:
        raise OnnxImportError(
            f"LinearAttention: q_num_heads ({q_num_heads}) must be a positive multiple of "
            f"kv_num_heads ({kv_num_heads})"
        )
    gated, delta = update_rule in ("gated", "gated_delta"), update_rule in ("delta", "gated_delta")
    if gated != (decay is not None) or delta != (beta is not None):
        raise OnnxImportError(
            f"LinearAttention: update_rule {update_rule!r} needs "
            f"{'a' if gated else 'no'} decay input and {'a' if delta else 'no'} beta input"
        )
    dtype = query._data.dtype
    compute = _compute(dtype)
    q = keep_dtype(_per_head(query, q_num_heads, "query"), compute)
    k = keep_dtype(_per_head(key, kv_num_heads, "key"), compute)
    v = keep_dtype(_per_head(value, kv_num_heads, "value"), compute)
    batch, _, steps, d_k = k.shape
    d_v = v.shape[3]
    if q.shape[3] != d_k:
        raise ShapeError(
            f"LinearAttention: query head size {q.shape[3]} differs from key head size {d_k}"
        )
    if decay is not None:
        if decay.ndim != 3 or decay.shape[2] not in (kv_num_heads, kv_num_heads * d_k):
            raise ShapeError(
                f"LinearAttention: decay of shape {list(decay.shape)} must be (B, T, "
                f"{kv_num_heads}) or (B, T, {kv_num_heads * d_k})"
            )
        decay = keep_dtype(_per_head(decay, kv_num_heads, "decay"), compute)  # b h t 1|dk
    if beta is not None:
        if beta.ndim != 3 or beta.shape[2] not in (kv_num_heads, 1):
            raise ShapeError(
                f"LinearAttention: beta of shape {list(beta.shape)} must be (B, T, "
                f"{kv_num_heads}) or (B, T, 1)"
            )
        beta = keep_dtype(_per_head(beta, beta.shape[2], "beta"), compute)  # b h t 1
    state_shape = (batch, kv_num_heads, d_k, d_v)
    if past_state is None:
        state_dtype = dtype
        state = wrap(np.zeros(state_shape, compute))
    elif tuple(past_state.shape) != state_shape:
        raise ShapeError(
            f"LinearAttention: past_state must be {list(state_shape)}, got {list(past_state.shape)}"
        )
    else:
        state_dtype = past_state._data.dtype
        state = keep_dtype(past_state, compute)
    factor = 1 / math.sqrt(d_k) if not scale else float(scale)
    group = q_num_heads // kv_num_heads
    outputs = []
    for t in range(steps):
        k_t, v_t = k[:, :, t : t + 1], v[:, :, t : t + 1]  # b h 1 dk, b h 1 dv
        if decay is not None:  # b h 1 dk|1 -> b h dk|1 1
            state = fn.mul(state, fn.transpose(fn.exp(decay[:, :, t : t + 1]), 2, 3))
        if beta is not None:
            retrieved = fn.matmul(k_t, state)  # b h 1 dk, b h dk dv -> b h 1 dv
            v_t = fn.mul(beta[:, :, t : t + 1], fn.sub(v_t, retrieved))
        state = fn.add(state, fn.matmul(fn.transpose(k_t, 2, 3), v_t))
        read = _repeat_heads(state, group)
        outputs.append(fn.mul(fn.matmul(q[:, :, t : t + 1], read), factor))  # b h 1 dv
    out = fn.cat(outputs, 2)  # b h t dv -> b t h*dv
    out = fn.reshape(fn.transpose(out, 1, 2), (batch, steps, q_num_heads * d_v))
    return keep_dtype(out, dtype), keep_dtype(state, state_dtype)
