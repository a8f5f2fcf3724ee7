"""Write the architecture test files: torchvision's models (small configurations where torchvision
allows one) and four task-shaped models, each exported by PyTorch's legacy exporter (opset 17)
and its dynamo exporter (opset 18), with their weights stripped.

A throwaway script, not part of the test path: it needs PyTorch and torchvision, which the
library never does. Run it from the repository root with a Python that has them:

    python tests/data/architectures/make_architectures.py

torchvision 0.28 from the index is built for another torch; only its model definitions are
needed, so its fake-kernel registration is disabled before the import.

Stripping: every float initializer with more than ``KEEP`` elements loses its values and keeps
its name, type and dims, marked in ``doc_string``; ``tests/architectures.py`` refills them with
seeded random weights before a test loads the file. The graph is exactly what the exporter
wrote; only the weight values are synthetic (as in the onnx package's "light" zoo models), so
all the files together stay small.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import onnx
import torch
from torch import nn

torch.library.register_fake = lambda *a, **k: lambda f: f
import torchvision.models as tvm  # noqa: E402
from torchvision.models import efficientnet, mobilenetv3, regnet  # noqa: E402
from torchvision.models.convnext import CNBlockConfig  # noqa: E402

HERE = Path(__file__).resolve().parent
KEEP = 64
STRIPPED = "finetune-test: values stripped"
NUM_CLASSES = 10


def _scaled_googlenet() -> nn.Module:
    """GoogLeNet's real structure with every width divided by 8 (torchvision takes the blocks)."""
    from torchvision.models.googlenet import BasicConv2d, Inception

    def conv(in_channels, out_channels, **kwargs):
        return BasicConv2d(
            in_channels if in_channels == 3 else in_channels // 8, out_channels // 8, **kwargs
        )

    def inception(in_channels, *widths, conv_block=None):
        return Inception(in_channels // 8, *(w // 8 for w in widths), conv_block=BasicConv2d)

    model = tvm.GoogLeNet(
        num_classes=NUM_CLASSES, aux_logits=False, init_weights=True, blocks=[conv, inception, None]
    )
    model.fc = nn.Linear(1024 // 8, NUM_CLASSES)
    return model


def _yolo_like() -> nn.Module:
    class Detector(nn.Module):
        """A YOLO-style head: a conv backbone, per-cell box predictions decoded with a grid made
        by arange/meshgrid at run time (Range, Expand in the graph)."""

        def __init__(self):
            super().__init__()
            self.backbone = nn.Sequential(
                nn.Conv2d(3, 8, 3, 2, 1),
                nn.BatchNorm2d(8),
                nn.SiLU(),
                nn.Conv2d(8, 16, 3, 2, 1),
                nn.BatchNorm2d(16),
                nn.SiLU(),
            )
            self.head = nn.Conv2d(16, 3 * (5 + 4), 1)  # 3 anchors, box + objectness + 4 classes

        def forward(self, x):
            p = self.head(self.backbone(x))
            n, _, h, w = p.shape
            p = p.view(n, 3, 9, h, w).permute(0, 1, 3, 4, 2)
            ys = torch.arange(h, dtype=torch.float32, device=x.device)
            xs = torch.arange(w, dtype=torch.float32, device=x.device)
            gy, gx = torch.meshgrid(ys, xs, indexing="ij")
            grid = torch.stack((gx, gy), -1).expand(n, 3, h, w, 2)
            xy = (p[..., :2].sigmoid() + grid) * 4.0
            wh = p[..., 2:4].exp() * 4.0
            rest = p[..., 4:].sigmoid()
            return torch.cat((xy, wh, rest), -1).reshape(n, -1, 9)

    return Detector()


def _dbnet_like() -> nn.Module:
    class Segmenter(nn.Module):
        """A DBNet-style text detector: backbone, upsampled feature fusion, a probability map
        from transposed convolutions and a hard-sigmoid."""

        def __init__(self):
            super().__init__()
            self.c1 = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU())
            self.c2 = nn.Sequential(nn.Conv2d(8, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU())
            self.lateral = nn.Conv2d(16, 8, 1)
            self.up = nn.Upsample(scale_factor=2, mode="nearest")
            self.prob = nn.Sequential(
                nn.Conv2d(8, 8, 3, 1, 1),
                nn.BatchNorm2d(8),
                nn.ReLU(),
                nn.ConvTranspose2d(8, 8, 2, 2),
                nn.BatchNorm2d(8),
                nn.ReLU(),
                nn.ConvTranspose2d(8, 1, 2, 2),
            )

        def forward(self, x):
            f1 = self.c1(x)
            fused = f1 + self.up(self.lateral(self.c2(f1)))
            return nn.functional.hardsigmoid(self.prob(fused))

    return Segmenter()


def _lstm_classifier() -> nn.Module:
    class Sequence(nn.Module):
        """A recurrent audio-style classifier: a bidirectional two-layer LSTM over frames."""

        def __init__(self):
            super().__init__()
            self.lstm = nn.LSTM(12, 16, num_layers=2, batch_first=True, bidirectional=True)
            self.fc = nn.Linear(32, NUM_CLASSES)

        def forward(self, x):
            out, _ = self.lstm(x)
            return self.fc(out[:, -1])

    return Sequence()


def _branching() -> nn.Module:
    class Branching(nn.Module):
        """A classifier whose forward takes one of two convolution branches by a data-dependent
        condition (an ``If`` node): the dynamo exporter writes torch.cond as If."""

        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3, 2, 1)
            self.a = nn.Conv2d(8, 8, 3, 1, 1)
            self.b = nn.Conv2d(8, 8, 1)
            self.fc = nn.Linear(8, NUM_CLASSES)

        def forward(self, x):
            y = self.stem(x).relu()
            y = torch.cond(y.mean() > 0.5, lambda t: self.a(t), lambda t: self.b(t).neg(), (y,))
            return self.fc(y.mean((2, 3)))

    return Branching()


def _models() -> dict[str, tuple]:
    """name → (model, example input)."""
    image = torch.randn(1, 3, 64, 64)
    mnv3_settings, mnv3_last = mobilenetv3._mobilenet_v3_conf("mobilenet_v3_small", width_mult=0.5)
    eff_settings, eff_last = efficientnet._efficientnet_conf(
        "efficientnet_b0", width_mult=0.25, depth_mult=0.34
    )
    return {
        "mobilenet_v2": (tvm.mobilenet_v2(width_mult=0.25, num_classes=NUM_CLASSES), image),
        "mobilenet_v3": (tvm.MobileNetV3(mnv3_settings, mnv3_last, num_classes=NUM_CLASSES), image),
        "efficientnet": (
            tvm.EfficientNet(eff_settings, 0.2, last_channel=eff_last, num_classes=NUM_CLASSES),
            image,
        ),
        "shufflenet_v2": (
            tvm.ShuffleNetV2([2, 2, 2], [8, 24, 48, 96, 128], num_classes=NUM_CLASSES),
            image,
        ),
        "regnet": (
            tvm.RegNet(
                regnet.BlockParams.from_init_params(
                    depth=6, w_0=16, w_a=8.0, w_m=2.0, group_width=8, se_ratio=0.25
                ),
                num_classes=NUM_CLASSES,
            ),
            image,
        ),
        "densenet": (tvm.DenseNet(8, (2, 2, 2, 2), 16, num_classes=NUM_CLASSES), image),
        "googlenet": (_scaled_googlenet(), image),
        "mnasnet": (tvm.mnasnet0_5(num_classes=NUM_CLASSES), image),
        "resnet50": (tvm.resnet50(num_classes=NUM_CLASSES), image),
        "convnext": (
            tvm.ConvNeXt(
                [CNBlockConfig(16, 32, 1), CNBlockConfig(32, 64, 1), CNBlockConfig(64, None, 2)],
                num_classes=NUM_CLASSES,
            ),
            image,
        ),
        "swin": (
            tvm.SwinTransformer([4, 4], 16, [2, 2], [2, 4], [4, 4], num_classes=NUM_CLASSES),
            image,
        ),
        "vit": (
            tvm.VisionTransformer(32, 8, 2, 2, 32, 64, num_classes=NUM_CLASSES),
            torch.randn(1, 3, 32, 32),
        ),
        "yolo_like": (_yolo_like(), image),
        "dbnet_like": (_dbnet_like(), image),
        "lstm_classifier": (_lstm_classifier(), torch.randn(1, 20, 12)),
        "branching": (_branching(), image),
    }


def _strip(model: onnx.ModelProto) -> onnx.ModelProto:
    """Weights' values and the dynamo exporter's per-node stack traces go; the graph stays."""
    for node in model.graph.node:
        del node.metadata_props[:]
    for tensor in model.graph.initializer:
        if tensor.data_type == onnx.TensorProto.FLOAT and _size(tensor) > KEEP:
            dims, name = list(tensor.dims), tensor.name
            tensor.Clear()
            tensor.name, tensor.data_type = name, onnx.TensorProto.FLOAT
            tensor.dims.extend(dims)
            tensor.doc_string = STRIPPED
    return model


def _size(tensor: onnx.TensorProto) -> int:
    n = 1
    for d in tensor.dims:
        n *= d
    return n


def _export(model: nn.Module, x: torch.Tensor, dynamo: bool) -> onnx.ModelProto:
    buffer = io.BytesIO()
    if dynamo:
        program = torch.onnx.export(
            model, (x,), dynamo=True, opset_version=18, optimize=True, verbose=False
        )
        program.save(buffer)
    else:
        torch.onnx.export(
            model,
            (x,),
            buffer,
            dynamo=False,
            opset_version=17,
            input_names=["input"],
            output_names=["output"],
            dynamic_axes={"input": {0: "N"}, "output": {0: "N"}},
        )
    return onnx.load_from_string(buffer.getvalue())


def main(names: list[str]) -> None:
    torch.manual_seed(0)
    for name, (model, x) in _models().items():
        if names and name not in names:
            continue
        model.eval()
        for dynamo in (False, True):
            if name == "branching" and not dynamo:
                continue  # the legacy exporter cannot write torch.cond
            tag = "dynamo" if dynamo else "legacy"
            try:
                proto = _export(model, x, dynamo)
            except Exception as error:  # noqa: BLE001 - report and go on with the others
                print(f"{name} {tag}: export failed: {type(error).__name__}: {error}"[:400])
                continue
            path = HERE / f"{name}_{tag}.onnx"
            onnx.save(_strip(proto), path)
            ops = sorted({n.op_type for n in proto.graph.node})
            print(f"{path.name}: {path.stat().st_size:,} bytes, {len(ops)} ops")


if __name__ == "__main__":
    main(sys.argv[1:])
