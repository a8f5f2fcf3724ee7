"""ShuffleNetV2's channel shuffle as one unit of the inference plan (``finetune/onnx/shuffle.py``):
the fused unit gives onnxruntime's values, takes its single pass only where the values are a
two-group shuffle of channels-last inputs, and runs the nodes it stands for otherwise."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper
from onnx_builders import initializer, make_model, random_weights, run_onnxruntime, value_info

import finetune as ft
from finetune.autograd import jit
from finetune.autograd.layout import as_nchw, is_channels_last
from finetune.onnx import shuffle

INT64_MAX = np.iinfo(np.int64).max


def _shape_chain(source: str, target: str, dims) -> list[onnx.NodeProto]:
    """PyTorch's export of a reshape target: for each of ``dims``, an int ``i`` is ``source``'s
    dimension ``i`` (``Shape -> Gather``), ``("/", g)`` its channels over ``g`` (and a ``Div``),
    a string ``"=v"`` the constant ``v``; each ``Unsqueeze``d, then one ``Concat``."""
    axes = f"{target}_axes"
    nodes = [helper.make_node("Constant", [], [axes], value=initializer(axes, np.array([0])))]

    def constant(name: str, value) -> str:
        nodes.append(helper.make_node("Constant", [], [name], value=initializer(name, value)))
        return name

    parts = []
    for i, d in enumerate(dims):
        name = f"{target}_{i}"
        if isinstance(d, str):
            scalar = constant(f"{name}_k", np.array(int(d[1:])))
        else:
            index = 1 if isinstance(d, tuple) else d
            nodes.append(helper.make_node("Shape", [source], [f"{name}_shape"]))
            at = constant(f"{name}_i", np.array(index))
            nodes.append(helper.make_node("Gather", [f"{name}_shape", at], [f"{name}_g"], axis=0))
            scalar = f"{name}_g"
            if isinstance(d, tuple):
                by = constant(f"{name}_by", np.array(d[1]))
                nodes.append(helper.make_node("Div", [scalar, by], [f"{name}_div"]))
                scalar = f"{name}_div"
        nodes.append(helper.make_node("Unsqueeze", [scalar, axes], [f"{name}_u"]))
        parts.append(f"{name}_u")
    nodes.append(helper.make_node("Concat", parts, [target], axis=0))
    return nodes


def _slice(name: str, source: str, lo: int, hi: int, axis: int = 1) -> list[onnx.NodeProto]:
    consts = {"starts": lo, "ends": hi, "axes": axis, "steps": 1}
    nodes = [
        helper.make_node("Constant", [], [f"{name}_{k}"],
                         value=initializer(f"{name}_{k}", np.array([v])))
        for k, v in consts.items()
    ]  # fmt: skip
    return [*nodes, helper.make_node("Slice", [source, *(f"{name}_{k}" for k in consts)], [name])]


def shuffle_model(
    rng,
    k: int = 4,
    groups: int = 2,
    halves=((0, "k"), ("k", INT64_MAX)),
    chained: bool = True,
    perm=(0, 2, 1, 3, 4),
    size=(4, 4),
) -> onnx.ModelProto:
    """``x -> two 1x1 convolutions (k channels each) -> Concat -> channel shuffle of
    ``groups`` -> ``halves`` by Slice (None: the shuffled value itself)``; the reshape targets
    from ``Shape`` chains (as PyTorch exports them) or constants with 0 and -1 for inputs of
    ``size``."""
    c = 2 * k
    inits = [initializer(f"w{i}", random_weights(rng, (k, 3, 1, 1))) for i in (0, 1)]
    nodes = [
        helper.make_node("Conv", ["x", "w0"], ["a"], kernel_shape=[1, 1]),
        helper.make_node("Conv", ["x", "w1"], ["b"], kernel_shape=[1, 1]),
        helper.make_node("Concat", ["a", "b"], ["cat"], axis=1),
    ]
    if chained:
        nodes += _shape_chain("cat", "target1", [0, f"={groups}", ("/", groups), 2, 3])
        nodes += _shape_chain("cat", "target2", [0, f"={c}", 2, 3])
    else:
        nodes += [
            helper.make_node("Constant", [], ["target1"],
                             value=initializer("target1", np.array([0, groups, -1, *size]))),
            helper.make_node("Constant", [], ["target2"],
                             value=initializer("target2", np.array([0, -1, *size]))),
        ]  # fmt: skip
    nodes += [
        helper.make_node("Reshape", ["cat", "target1"], ["grouped"]),
        helper.make_node("Transpose", ["grouped"], ["turned"], perm=list(perm)),
        helper.make_node("Reshape", ["turned", "target2"], ["shuffled"]),
    ]
    if halves is None:
        nodes.append(helper.make_node("Relu", ["shuffled"], ["y0"]))
        outputs = [value_info("y0", list("nchw"))]
    else:
        for i, (lo, hi) in enumerate(halves):
            lo, hi = (k if v == "k" else v for v in (lo, hi))
            nodes += _slice(f"y{i}", "shuffled", lo, hi)
        outputs = [value_info(f"y{i}", [f"{d}{i}" for d in "nchw"]) for i in range(2)]
    x = value_info("x", ["n", 3, "h", "w"])
    return make_model(nodes, [x], outputs, inits, opset=17)


@pytest.fixture
def passes(monkeypatch) -> list:
    """The single passes ``ChannelShuffle`` takes (one per output)."""
    taken = []
    interleave = shuffle._interleave

    def counted(x, y, lo, hi):
        taken.append((lo, hi))
        return interleave(x, y, lo, hi)

    monkeypatch.setattr(shuffle, "_interleave", counted)
    return taken


def _run_planned(proto, x) -> list[np.ndarray]:
    """Two planned calls (the second takes the fast program); their outputs, which must agree."""
    model = ft.onnx.load(proto)
    model.eval()
    with ft.no_grad():
        results = [model(ft.from_numpy(x)) for _ in range(2)]
    results = [[r] if isinstance(r, ft.Tensor) else list(r) for r in results]
    for first, second in zip(*results):
        np.testing.assert_array_equal(first.numpy(), second.numpy())
    ops = [unit[-1].op_type for unit in model._plan.plan._fast]
    return [r.numpy() for r in results[1]], ops


@pytest.mark.parametrize("chained", [True, False], ids=["shape-chains", "constant-targets"])
@pytest.mark.parametrize("halves", [((0, "k"), ("k", INT64_MAX)), None], ids=["halves", "whole"])
def test_a_channel_shuffle_runs_as_one_pass(chained, halves, passes):
    rng = np.random.default_rng(0)
    proto = shuffle_model(rng, k=4, halves=halves, chained=chained, size=(5, 6))
    x = rng.standard_normal((2, 3, 5, 6)).astype(np.float32)
    got, ops = _run_planned(proto, x)
    for value, want in zip(got, run_onnxruntime(proto, x)):
        np.testing.assert_array_equal(value, want)  # copies of the convolutions' values
    assert ops.count("ChannelShuffle") == 1
    assert not {"Concat", "Reshape", "Transpose", "Slice"} & set(ops)
    assert passes == ([(0, 2), (2, 4)] if halves else [(0, 4)])
    assert all(is_channels_last(v) for v in got[:1] if halves)


@pytest.mark.parametrize(
    "k, groups, halves, perm",
    [
        (4, 2, (("k", INT64_MAX), (0, "k")), (0, 2, 1, 3, 4)),  # the halves the other way round
        (4, 2, ((0, 3), (3, INT64_MAX)), (0, 2, 1, 3, 4)),  # not halves
        (3, 2, ((0, "k"), ("k", INT64_MAX)), (0, 2, 1, 3, 4)),  # halves of an odd width
        (6, 3, ((0, "k"), ("k", INT64_MAX)), (0, 2, 1, 3, 4)),  # three groups
    ],
    ids=["swapped", "uneven", "odd", "three-groups"],
)
def test_anything_else_runs_the_nodes(k, groups, halves, perm, passes):
    rng = np.random.default_rng(1)
    proto = shuffle_model(rng, k=k, groups=groups, halves=halves, perm=perm)
    x = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)  # shape chains: any size
    got, _ = _run_planned(proto, x)
    for value, want in zip(got, run_onnxruntime(proto, x)):
        np.testing.assert_array_equal(value, want)
    assert passes == []


def test_a_transpose_of_other_axes_is_no_shuffle():
    rng = np.random.default_rng(2)
    proto = shuffle_model(rng, perm=(0, 1, 2, 4, 3), chained=False)
    x = rng.standard_normal((1, 3, 4, 4)).astype(np.float32)
    got, ops = _run_planned(proto, x)
    assert "ChannelShuffle" not in ops
    for value, want in zip(got, run_onnxruntime(proto, x)):
        np.testing.assert_array_equal(value, want)


def test_inputs_in_another_layout_run_the_nodes(passes):
    """Graph inputs concatenated straight away are row-major: the nodes run."""
    c = 8
    nodes = [
        helper.make_node("Concat", ["a", "b"], ["cat"], axis=1),
        helper.make_node("Constant", [], ["t1"],
                         value=initializer("t1", np.array([0, 2, -1, 3, 3]))),
        helper.make_node("Constant", [], ["t2"], value=initializer("t2", np.array([0, c, 3, 3]))),
        helper.make_node("Reshape", ["cat", "t1"], ["g"]),
        helper.make_node("Transpose", ["g"], ["t"], perm=[0, 2, 1, 3, 4]),
        helper.make_node("Reshape", ["t", "t2"], ["y"]),
    ]  # fmt: skip
    inputs = [value_info(n, ["n", c // 2, 3, 3]) for n in ("a", "b")]
    proto = make_model(nodes, inputs, [value_info("y", list("nchw"))], opset=17)
    rng = np.random.default_rng(3)
    a, b = (rng.standard_normal((2, c // 2, 3, 3)).astype(np.float32) for _ in range(2))
    model = ft.onnx.load(proto)
    model.eval()
    with ft.no_grad():
        for _ in range(2):
            got = model(ft.from_numpy(a), ft.from_numpy(b)).numpy()
    np.testing.assert_array_equal(got, run_onnxruntime(proto, a, b)[0])
    assert passes == []


def test_a_trainable_convolution_before_the_shuffle_gets_the_walks_gradient(passes):
    """With a gradient to record (unfrozen layers before the shuffle) the plan's unit runs the
    nodes, and the weights' gradients are those of the node-by-node walk."""
    rng = np.random.default_rng(4)
    proto = shuffle_model(rng, k=4, chained=False)
    x = ft.from_numpy(rng.standard_normal((2, 3, 4, 4)).astype(np.float32))
    g0, g1 = (ft.from_numpy(rng.standard_normal((2, 4, 4, 4)).astype(np.float32)) for _ in "01")
    model = ft.onnx.load(proto)
    model.eval()
    for p in model.parameters():  # imported weights come frozen
        p.requires_grad_(True)
    grads = []
    for forward in (model, lambda t: model._walk(model._bind_inputs((t,)))):
        for _ in range(2):  # the plan's second call takes its fast program
            model.zero_grad()
            y0, y1 = forward(x)
            ((y0 * g0).sum() + (y1 * g1).sum()).backward()
        grads.append([p.grad.numpy().copy() for p in model.parameters()])
    assert model._plan.plan is not None and passes == []
    for planned, walked in zip(*grads):
        np.testing.assert_array_equal(planned, walked)
        assert np.abs(planned).sum() > 0


@pytest.mark.parametrize("kernel", ["compiled", "numpy"])
@pytest.mark.parametrize("shape", [(1, 8, 3, 5), (3, 12, 40, 41)])
def test_interleave_matches_a_loop(shape, kernel, monkeypatch):
    """The single pass (compiled, and numpy's copies) against one channel at a time, on both
    threads for the larger shape."""
    if kernel == "compiled":
        pytest.importorskip("numba")
        monkeypatch.setattr(jit, "ENABLED", True)
        jit.load()
    else:
        monkeypatch.setattr(jit, "ENABLED", False)
    rng = np.random.default_rng(5)
    n, k, h, w = shape
    x, y = (as_nchw(rng.standard_normal((n, h, w, k)).astype(np.float32)) for _ in range(2))
    for lo, hi in ((0, k), (0, k // 2), (k // 2, k)):
        got = shuffle._interleave(x, y, lo, hi)
        want = np.empty((n, 2 * (hi - lo), h, w), np.float32)
        for i in range(hi - lo):
            want[:, 2 * i] = x[:, lo + i]
            want[:, 2 * i + 1] = y[:, lo + i]
        np.testing.assert_array_equal(got, want)
        assert is_channels_last(got)
