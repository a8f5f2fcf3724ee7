"""torchvision's architectures for the benchmark's model list: built with seeded random weights,
exported once by PyTorch's legacy exporter (opset 17, dynamic batch) into a cache folder.

Imported only by processes that run PyTorch (the export and the PyTorch workers of
``benchmarks/compare.py``); it needs ``torch`` and ``torchvision`` (``pip install -e '.[bench]'``).
"""

from __future__ import annotations

from pathlib import Path

# the architectures (issue 18), then the ones that joined when they became importable
DEFAULT_MODELS = [
    "efficientnet_b0",
    "mnasnet0_5",
    "shufflenet_v2_x0_5",
    "mobilenet_v2",
    "regnet_y_400mf",
    "densenet121",
    "googlenet",
    "resnet50",
    "mobilenet_v3_large",
    "convnext_tiny",
    "swin_t",
    "vit_s_16",
]
# the full training step is measured for these (the targets name them)
FULL_STEP_MODELS = {"mobilenet_v2", "efficientnet_b0", "convnext_tiny", "vit_s_16"}
OPSET = 17
INPUT_SHAPE = (3, 224, 224)
SEED = 0


def import_torchvision():
    """``(torch, torchvision.models)``. torchvision 0.28 from the package index is built against
    another torch build than torch 2.13.0+cpu, and registering the fake (meta) kernels of its
    custom operators fails at import; the benchmark needs none of them, so that registration is
    made a no-op before ``torchvision.models`` loads."""
    import torch

    torch.library.register_fake = lambda *args, **kwargs: lambda fn: fn
    import torchvision
    import torchvision.models as tvm

    return torch, torchvision, tvm


def _builders(tvm) -> dict:
    from torchvision.models.vision_transformer import VisionTransformer

    def vit_s_16():  # ViT-S/16 (DeiT-S's shape); torchvision ships B, L and H only
        return VisionTransformer(
            image_size=224, patch_size=16, num_layers=12, num_heads=6, hidden_dim=384, mlp_dim=1536
        )

    return {
        "efficientnet_b0": tvm.efficientnet_b0,
        "mnasnet0_5": tvm.mnasnet0_5,
        "shufflenet_v2_x0_5": tvm.shufflenet_v2_x0_5,
        "mobilenet_v2": tvm.mobilenet_v2,
        "regnet_y_400mf": tvm.regnet_y_400mf,
        "densenet121": tvm.densenet121,
        "googlenet": lambda: tvm.googlenet(aux_logits=False, init_weights=True),
        "resnet50": tvm.resnet50,
        "resnet18": tvm.resnet18,
        "mobilenet_v3_large": tvm.mobilenet_v3_large,
        "convnext_tiny": tvm.convnext_tiny,
        "swin_t": tvm.swin_t,
        "vit_s_16": vit_s_16,
    }


KNOWN_MODELS = [*DEFAULT_MODELS, "resnet18"]


def build(name: str):
    """The torchvision model ``name`` with random weights drawn from seed ``SEED``, in eval mode."""
    torch, _, tvm = import_torchvision()
    torch.manual_seed(SEED)
    return _builders(tvm)[name]().eval()


def cache_paths(name: str, folder: Path) -> tuple[Path, Path]:
    """Where ``name``'s ONNX file and its PyTorch weights are kept."""
    return folder / f"{name}.onnx", folder / f"{name}.pt"


def export(name: str, folder: Path) -> tuple[Path, Path]:
    """Export ``name`` into ``folder`` unless it is there already; the weights are saved beside
    it so that the PyTorch workers run the very same model."""
    onnx_path, weights_path = cache_paths(name, folder)
    if onnx_path.exists() and weights_path.exists():
        return onnx_path, weights_path
    torch, _, _ = import_torchvision()
    folder.mkdir(parents=True, exist_ok=True)
    model = build(name)
    tmp = onnx_path.with_suffix(".onnx.partial")
    torch.onnx.export(
        model,
        torch.zeros(1, *INPUT_SHAPE),
        str(tmp),
        opset_version=OPSET,
        dynamo=False,
        input_names=["input"],
        output_names=["output"],
        dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
    )
    torch.save(model.state_dict(), weights_path)
    tmp.replace(onnx_path)  # last: a run interrupted mid-export leaves no half file in the cache
    return onnx_path, weights_path


def load(name: str, weights_path: str):
    """``name`` with the weights exported beside its ONNX file, in eval mode."""
    torch, _, _ = import_torchvision()
    model = build(name)
    model.load_state_dict(torch.load(weights_path, weights_only=True))
    return model


def replace_head(torch, model, num_classes: int):
    """Put a new ``nn.Linear`` with ``num_classes`` outputs in place of the model's last linear
    layer (every architecture here ends in one) and return it."""
    name, old = [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)][-1]
    head = torch.nn.Linear(old.in_features, num_classes)
    parent, _, attribute = name.rpartition(".")
    setattr(model.get_submodule(parent), attribute, head)
    return head
