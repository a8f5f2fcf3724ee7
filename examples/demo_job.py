"""`make example`: the main job on the embedded default data, start to finish.

1. Generate the synthetic shapes set under data/shapes/ if it is missing.
2. Start from models/resnet18-v1-7.onnx: use it if present, download it when the network allows.
   Otherwise (offline) pretrain the library's own ResNet-18 layout at an eighth of its width,
   without the stem's max pooling, on a different synthetic set (twelve other shapes; none of
   the demo's four classes) at 64x64 pixels, export it to ONNX and start from that file, cached
   in models/ for the next run (examples/pretext_backbone.py). The output says which backbone
   was used and why.
3. Fine-tune with the seed's recipe (import, freeze, new head, SGD lr 0.01 momentum 0.9),
   printing per-epoch metrics; write runs/<name>/ (history.json, plot, checkpoint, model.onnx).
4. Predict a few validation images from the exported file.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from pretext_backbone import PretextConfig, pretext_backbone  # noqa: E402

ZOO = "the ONNX model zoo's ImageNet-pretrained resnet18-v1-7"


def starting_model(
    models_dir: Path, allow_download: bool, pretext: PretextConfig, use_zoo: bool = True
) -> tuple[Path, str]:
    """The ONNX file the recipe starts from and a sentence saying which backbone it is and why."""
    import finetune as ft
    from finetune.errors import DownloadError

    zoo = models_dir / "resnet18-v1-7.onnx"
    if use_zoo and zoo.exists():
        return zoo, f"{ZOO} ({zoo})"
    if use_zoo and allow_download:
        try:
            path = ft.models.download("resnet18", dest=models_dir, progress=True)
            return Path(path), f"{ZOO} (downloaded to {path})"
        except DownloadError as err:
            print(f"could not download the pretrained ResNet-18: {str(err).splitlines()[0]}")
    why = "no pretrained weights are available here" if use_zoo else "--pretext was given"
    print(
        f"NOTE: {why}, so this run starts from a ResNet-18 the library pretrains itself on "
        "synthetic pretext images (twelve other shapes in random colours; never a circle, "
        "square, triangle or star): frozen random weights learn nothing. It is an eighth of "
        "ResNet-18's width, without the stem's max pooling, at 64x64 pixels: what trains in "
        "about two minutes here."
    )
    path, how = pretext_backbone(models_dir, pretext)
    print(how)
    return path, (
        f"a width-{pretext.width} ResNet-18 pretrained offline on pretext shapes at "
        f"{pretext.image_size}x{pretext.image_size} ({path}; put resnet18-v1-7.onnx in "
        f"{models_dir} to start from ImageNet weights instead)"
    )


def main(argv=None) -> int:
    from finetune.cli import non_negative_int, positive_int

    defaults = PretextConfig()
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--name", default="demo", help="run folder name under --runs")
    parser.add_argument("--epochs", type=positive_int, default=5, help="fine-tuning epochs")
    parser.add_argument(
        "--image-size",
        type=positive_int,
        default=None,
        help="fine-tuning image size; by default the starting model's own (224 for the zoo's "
        f"file, {defaults.image_size} for the pretext backbone)",
    )
    parser.add_argument("--n-per-class", type=positive_int, default=60, help="demo training images")
    parser.add_argument("--no-download", action="store_true", help="never use the network")
    parser.add_argument(
        "--pretext", action="store_true", help="start from the pretext backbone even with the zoo's"
    )
    # the pretext backbone's settings, each a PretextConfig field, as --pretext-<field>
    pretext_options = {
        "steps": (positive_int, "its steps"),
        "batch_size": (positive_int, "its batch size"),
        "seed": (non_negative_int, "its seed"),
        "width": (positive_int, "its stem's channels"),
        "image_size": (positive_int, "its image size"),
        "processes": (positive_int, "its processes"),
    }
    for field, (kind, text) in pretext_options.items():
        flag = "--pretext-" + field.replace("_", "-")
        parser.add_argument(flag, type=kind, default=getattr(defaults, field), help=text)
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "shapes", help="demo data")
    parser.add_argument("--models", type=Path, default=ROOT / "models", help="model files")
    parser.add_argument("--runs", type=Path, default=ROOT / "runs", help="run folders")
    args = parser.parse_args(argv)
    try:
        pretext = PretextConfig(**{f: getattr(args, f"pretext_{f}") for f in pretext_options})
    except ValueError as error:  # e.g. more processes than images in a batch
        parser.error(str(error))

    from finetune.data.demo import make_shapes
    from finetune.predict import Predictor
    from finetune.recipe import run

    t0 = time.perf_counter()
    data = args.data
    if not (data / "train").is_dir():
        make_shapes(data, n_per_class=args.n_per_class, size=64, seed=0)
        print(f"generated the demo data set in {data}")
    args.models.mkdir(parents=True, exist_ok=True)
    model_path, described = starting_model(
        args.models, not args.no_download, pretext, use_zoo=not args.pretext
    )
    print(f"starting model: {described}")
    t_fine = time.perf_counter()
    result = run(
        str(model_path),
        data,
        args.runs / args.name,
        epochs=args.epochs,
        image_size=args.image_size,  # None: the model file's own input size
        overwrite=True,  # the example replaces its own previous run
    )
    t_fine = time.perf_counter() - t_fine
    predictor = Predictor(result.model_path)
    # two validation images of each class
    val_images = [
        path for name in result.classes for path in sorted((data / "val" / name).glob("*.png"))[:2]
    ]
    print(f"predictions from {result.model_path}:")
    for image in val_images:
        (name, prob), *_ = predictor.predict(image, top_k=1)
        print(f"  {image.parent.name}/{image.name}: {name} ({prob:.1%})")
    last = result.history[-1]
    print(
        f"done in {time.perf_counter() - t0:.0f} s (fine-tune {t_fine:.0f} s): "
        f"val_acc={last['val_acc']:.3f} from {described.split(' (')[0]} "
        f"(run folder {result.out_dir})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
