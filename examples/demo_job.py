"""`make example`: the main job on the embedded default data, start to finish.

1. Generate the synthetic shapes set under data/shapes/ if it is missing.
2. Start from models/resnet18-v1-7.onnx: use it if present, download it when the network allows,
   otherwise build a ResNet-18 ONNX file from the library's own randomly initialised resnet18()
   and say so plainly.
3. Fine-tune with the seed's recipe (frozen weights, new fc, SGD lr 0.01 momentum 0.9), printing
   per-epoch metrics; write runs/<name>/ (history.json, plot, checkpoint, model.onnx).
4. Predict a few validation images from the exported file.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def calibrated_random_resnet18(data: Path, image_size: int):
    """A randomly initialised ResNet-18 whose BatchNorm statistics are estimated on the training
    images (without them, random features grow by orders of magnitude through the network and
    the head's loss explodes)."""
    import finetune as ft
    from finetune.data import DataLoader, ImageFolder
    from finetune.recipe import eval_transform

    ft.manual_seed(0)
    net = ft.models.resnet18()
    for module in net.modules():
        if isinstance(module, ft.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # a plain average over all batches
    net.train()
    with ft.no_grad():
        for x, _ in DataLoader(ImageFolder(data / "train", eval_transform(image_size)), 32):
            net(x)
    return net.eval()


def starting_model(
    models_dir: Path, data: Path, image_size: int, allow_download: bool
) -> tuple[Path, str]:
    import finetune as ft
    from finetune.errors import DownloadError

    zoo = models_dir / "resnet18-v1-7.onnx"
    if zoo.exists():
        return zoo, "the ONNX model zoo's pretrained resnet18-v1-7"
    if allow_download:
        try:
            path = ft.models.download("resnet18", dest=models_dir, progress=True)
            return Path(path), "the ONNX model zoo's pretrained resnet18-v1-7 (downloaded)"
        except DownloadError as err:
            print(f"could not download the pretrained ResNet-18: {str(err).splitlines()[0]}")
    random_path = models_dir / "resnet18-random-init.onnx"
    if not random_path.exists():
        net = calibrated_random_resnet18(data, image_size)
        ft.onnx.export(net, ft.zeros(1, 3, image_size, image_size), random_path)
    print(
        "NOTE: no pretrained weights are available here, so this run starts from a ResNet-18 "
        f"with RANDOM weights built by the library ({random_path}). Accuracy will be far below "
        "what a pretrained backbone gives; put resnet18-v1-7.onnx in models/ to use it."
    )
    return random_path, (
        "a randomly initialised ResNet-18, BatchNorm statistics estimated on the "
        "demo images (no pretrained weights available)"
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", default="demo")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--n-per-class", type=int, default=60)
    parser.add_argument("--no-download", action="store_true")
    args = parser.parse_args(argv)

    from finetune.data.demo import make_shapes
    from finetune.predict import Predictor
    from finetune.recipe import run

    t0 = time.perf_counter()
    data = ROOT / "data" / "shapes"
    if not (data / "train").is_dir():
        make_shapes(data, n_per_class=args.n_per_class, size=64, seed=0)
        print(f"generated the demo data set in {data}")
    models_dir = ROOT / "models"
    models_dir.mkdir(exist_ok=True)
    model_path, described = starting_model(
        models_dir, data, args.image_size, allow_download=not args.no_download
    )
    print(f"starting model: {described}")
    result = run(
        str(model_path),
        data,
        ROOT / "runs" / args.name,
        epochs=args.epochs,
        image_size=args.image_size,
        overwrite=True,  # the example replaces its own previous run
    )
    predictor = Predictor(result.model_path)
    val_images = sorted((data / "val").glob("*/*.png"))[:: max(1, len(result.classes))][:6]
    print(f"predictions from {result.model_path}:")
    for image in val_images:
        (name, prob), *_ = predictor.predict(image, top_k=1)
        print(f"  {image.parent.name}/{image.name}: {name} ({prob:.1%})")
    last = result.history[-1]
    print(
        f"done in {time.perf_counter() - t0:.0f} s: val_acc={last['val_acc']:.3f} "
        f"(run folder {result.out_dir})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
