"""Time the convolution and pooling kernels at ResNet-18's shapes (batch 8, 3x224x224, float32),
and the depthwise and grouped convolutions of the light architectures.

Prints, per layer shape: forward and backward milliseconds, GFLOP/s, and how often the shape
occurs in the network; then the network totals next to numpy's own 2048x2048 float32 matmul
GFLOP/s, the machine's ceiling for these kernels. The light layers (EfficientNet-B0,
MobileNetV2, ConvNeXt-Tiny, RegNetY-400MF) are timed at batch 1 and the chosen batch, forward
and backward, next to the generic im2col path the depthwise kernels replaced (RegNet's grouped
layers, 8 channels per group, still take it: both columns time the same path) and to
onnxruntime running the same single Conv node on 2 threads (when installed). Run from the
repository root with the package installed (``make bench`` installs it): ``python
benchmarks/kernels.py [--batch N] [--only resnet18|light]``.
"""

from __future__ import annotations

import argparse
import statistics

# finetune before numpy, as the README advises: it sets OpenBLAS's thread timeout, which numpy
# reads once when it loads OpenBLAS (docs/performance.md, "All cores for the copies")
import finetune as torch

# isort: split
import numpy as np
from compare import timed  # the timing loop make bench uses

from finetune.autograd import conv as kernels
from finetune.autograd import depthwise

# name, in channels, out channels, input size, kernel, stride, padding, occurrences in ResNet-18
CONVS = [
    ("conv1 7x7/2", 3, 64, 224, 7, 2, 3, 1),
    ("layer1 3x3/1", 64, 64, 56, 3, 1, 1, 4),
    ("layer2.0 3x3/2", 64, 128, 56, 3, 2, 1, 1),
    ("layer2 3x3/1", 128, 128, 28, 3, 1, 1, 3),
    ("layer2 down 1x1/2", 64, 128, 56, 1, 2, 0, 1),
    ("layer3.0 3x3/2", 128, 256, 28, 3, 2, 1, 1),
    ("layer3 3x3/1", 256, 256, 14, 3, 1, 1, 3),
    ("layer3 down 1x1/2", 128, 256, 28, 1, 2, 0, 1),
    ("layer4.0 3x3/2", 256, 512, 14, 3, 2, 1, 1),
    ("layer4 3x3/1", 512, 512, 7, 3, 1, 1, 3),
    ("layer4 down 1x1/2", 256, 512, 14, 1, 2, 0, 1),
]


# name, in channels, out channels, input size, kernel, stride, groups (the light architectures'
# depthwise and grouped layers; padding keeps the size, (k - 1) / 2)
LIGHT = [
    ("effnet/mbv2 dw3x3 112", 32, 32, 112, 3, 1, 32),
    ("mbv2 dw3x3/2 112", 96, 96, 112, 3, 2, 96),
    ("effnet dw3x3 56", 144, 144, 56, 3, 1, 144),
    ("effnet dw5x5/2 56", 144, 144, 56, 5, 2, 144),
    ("effnet dw5x5 28", 240, 240, 28, 5, 1, 240),
    ("mbv2 dw3x3 14", 384, 384, 14, 3, 1, 384),
    ("effnet dw5x5 14", 672, 672, 14, 5, 1, 672),
    ("effnet dw5x5 7", 1152, 1152, 7, 5, 1, 1152),
    ("convnext dw7x7 56", 96, 96, 56, 7, 1, 96),
    ("convnext dw7x7 28", 192, 192, 28, 7, 1, 192),
    ("convnext dw7x7 14", 384, 384, 14, 7, 1, 384),
    ("convnext dw7x7 7", 768, 768, 7, 7, 1, 768),
    ("regnet g8 3x3/2 112", 48, 48, 112, 3, 2, 6),
    ("regnet g8 3x3 28", 104, 104, 28, 3, 1, 13),
    ("regnet g8 3x3 14", 208, 208, 14, 3, 1, 26),
    ("regnet g8 3x3 7", 440, 440, 7, 3, 1, 55),
]


def median_ms(fn, repeats: int) -> float:
    """Median milliseconds of ``repeats`` calls after one warm-up call."""
    return 1e3 * statistics.median(timed(fn, repeats, warmup=1))


def matmul_gflops(size: int = 2048, repeats: int = 5) -> float:
    a = np.random.default_rng(0).standard_normal((size, size), dtype=np.float32)
    b = np.random.default_rng(1).standard_normal((size, size), dtype=np.float32)
    return 2 * size**3 / median_ms(lambda: a @ b, repeats) / 1e6


def bench_conv(batch: int, cin, cout, size, k, s, p, repeats: int) -> tuple[float, float, float]:
    """Forward ms (no graph), backward ms, GFLOP of the forward. The backward computes the
    weight gradient, and the input gradient except for conv1, whose input is the image."""
    r = np.random.default_rng(0)
    x = torch.tensor(r.standard_normal((batch, cin, size, size), dtype=np.float32))
    w = torch.tensor(r.standard_normal((cout, cin, k, k), dtype=np.float32) * 0.05)
    opts = dict(stride=(s, s), padding=((p, p), (p, p)), dilation=(1, 1), groups=1)
    with torch.no_grad():
        forward = median_ms(lambda: kernels.conv(x, w, None, **opts), repeats)
    xg, wg = x.detach().requires_grad_(cin != 3), w.detach().requires_grad_(True)
    y = kernels.conv(xg, wg, None, **opts)
    grad = np.ones(y.shape, dtype=np.float32)
    node = y.grad_fn
    backward = median_ms(lambda: node.apply_backward(grad), repeats)
    out = (size + 2 * p - k) // s + 1
    flops = 2 * batch * cout * out * out * cin * k * k
    return forward, backward, flops / 1e9


def bench_maxpool(batch: int, repeats: int) -> tuple[float, float, float]:
    """Forward ms without graph, forward ms recording the graph (which tap won), backward ms."""
    r = np.random.default_rng(0)
    x = torch.tensor(r.standard_normal((batch, 64, 112, 112), dtype=np.float32))
    opts = dict(kernel_size=(3, 3), stride=(2, 2), padding=((1, 1), (1, 1)))
    with torch.no_grad():
        forward = median_ms(lambda: kernels.max_pool(x, **opts), repeats)
    xg = x.detach().requires_grad_(True)
    recording = median_ms(lambda: kernels.max_pool(xg, **opts), repeats)
    y = kernels.max_pool(xg, **opts)
    grad = np.ones(y.shape, dtype=np.float32)
    node = y.grad_fn
    backward = median_ms(lambda: node.apply_backward(grad), repeats)
    return forward, recording, backward


def onnxruntime_conv_ms(x: np.ndarray, w: np.ndarray, s: int, p: int, groups: int, repeats: int):
    """Median ms of onnxruntime (2 threads) running one Conv node, or None without it."""
    try:
        import onnxruntime as ort
        from onnx import TensorProto, helper
    except ImportError:
        return None

    node = helper.make_node("Conv", ["x", "w"], ["y"], group=groups, strides=[s, s], pads=[p] * 4)
    graph = helper.make_graph(
        [node],
        "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [helper.make_tensor("w", TensorProto.FLOAT, w.shape, w.ravel())],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = 2, 1
    session = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    return median_ms(lambda: session.run(None, {"x": x}), repeats)


def bench_light(batch: int, cin, cout, size, k, s, groups, repeats: int, generic: bool) -> tuple:
    """Forward ms (no graph) and backward ms (input and weight gradients) on a channels-last
    input, as the previous layer leaves it; ``generic``: with the depthwise kernels switched off
    (the im2col path)."""
    r = np.random.default_rng(0)
    data = r.standard_normal((batch, size, size, cin), dtype=np.float32).transpose(0, 3, 1, 2)
    x = torch.tensor(data)
    w = torch.tensor(r.standard_normal((cout, cin // groups, k, k), dtype=np.float32) * 0.1)
    p = (k - 1) // 2
    opts = dict(stride=(s, s), padding=((p, p), (p, p)), dilation=(1, 1), groups=groups)
    plan = depthwise.plan
    if generic:
        depthwise.plan = lambda *args: None
    try:
        with torch.no_grad():
            forward = median_ms(lambda: kernels.conv(x, w, None, **opts), repeats)
        xg, wg = x.detach().requires_grad_(True), w.detach().requires_grad_(True)
        y = kernels.conv(xg, wg, None, **opts)
        grad = np.ones(y.shape, dtype=np.float32)
        node = y.grad_fn
        backward = median_ms(lambda: node.apply_backward(grad), repeats)
    finally:
        depthwise.plan = plan
    return forward, backward


def light_rows(batch: int, repeats: int) -> None:
    """The depthwise and grouped layers of the light architectures at batch 1 and ``batch``."""
    print(
        f"\n{'light layer':22} {'b':>2} {'fwd ms':>8} {'im2col':>8} {'ort':>8} {'/ort':>6} "
        f"{'bwd ms':>8} {'im2col':>8}"
    )
    for b in sorted({1, batch}):
        for name, cin, cout, size, k, s, groups in LIGHT:
            fwd, bwd = bench_light(b, cin, cout, size, k, s, groups, repeats, generic=False)
            old_fwd, old_bwd = bench_light(b, cin, cout, size, k, s, groups, repeats, generic=True)
            r = np.random.default_rng(0)
            x = r.standard_normal((b, cin, size, size), dtype=np.float32)
            w = r.standard_normal((cout, cin // groups, k, k), dtype=np.float32)
            ort_ms = onnxruntime_conv_ms(x, w, s, (k - 1) // 2, groups, repeats)
            ort_text = (
                f"{'-':>8} {'-':>6}" if ort_ms is None else f"{ort_ms:8.2f} {fwd / ort_ms:6.1f}"
            )
            print(
                f"{name:22} {b:>2} {fwd:8.2f} {old_fwd:8.2f} {ort_text} {bwd:8.2f} {old_bwd:8.2f}",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--only", choices=["resnet18", "light"], default=None)
    args = parser.parse_args()
    if args.only == "light":
        light_rows(args.batch, args.repeats)
        return
    ceiling = matmul_gflops()
    print(f"numpy 2048x2048 float32 matmul: {ceiling:.0f} GFLOP/s")
    print(f"batch {args.batch}, float32, median of {args.repeats}")
    header = f"{'layer':20} {'x':>2} {'fwd ms':>8} {'GFLOP/s':>8} {'bwd ms':>8} {'GFLOP/s':>8}"
    print(header)
    total_fwd = total_bwd = total_flops = 0.0
    for name, cin, cout, size, k, s, p, count in CONVS:
        fwd, bwd, gflop = bench_conv(args.batch, cin, cout, size, k, s, p, args.repeats)
        total_fwd += count * fwd
        total_bwd += count * bwd
        total_flops += count * gflop
        print(
            f"{name:20} {count:>2} {fwd:8.1f} {gflop / fwd * 1e3:8.0f} "
            f"{bwd:8.1f} {(1 if cin == 3 else 2) * gflop / bwd * 1e3:8.0f}"
        )
    fwd, recording, bwd = bench_maxpool(args.batch, args.repeats)
    print(f"{'maxpool 3x3/2':20} {1:>2} {fwd:8.1f} {'':>8} {bwd:8.1f}")
    print(f"{'  (fwd with graph)':20} {'':>2} {recording:8.1f}")
    total_fwd += fwd
    total_bwd += bwd
    print(
        f"{'all convs + maxpool':20} {'':>2} {total_fwd:8.1f} "
        f"{total_flops / total_fwd * 1e3:8.0f} {total_bwd:8.1f} "
        f"{2 * total_flops / total_bwd * 1e3:8.0f}"
    )
    print(f"forward at {100 * total_flops / total_fwd * 1e3 / ceiling:.0f}% of the matmul ceiling")
    if args.only is None:
        light_rows(args.batch, args.repeats)


if __name__ == "__main__":
    main()
