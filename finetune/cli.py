"""The ``finetune`` command: train, predict, inspect, export, download, demo-data.

Errors the user can fix (every ``FinetuneError``, and file system errors such as a full disk)
come out as one line on stderr and a non-zero exit; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import sys

from .errors import FinetuneError

EXIT_ERROR = 2
EXIT_INTERRUPTED = 130


def _train(args) -> int:
    from .recipe import run

    result = run(
        args.model,
        args.data,
        args.out,
        epochs=args.epochs,
        lr=args.lr,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
        batch_size=args.batch_size,
        seed=args.seed,
        augment=args.augment,
        resume=args.resume,
        image_size=args.image_size,
        num_workers=args.workers,
        progress=not args.quiet,
    )
    last = result.history[-1] if result.history else {}
    if last.get("val_acc") is not None:
        print(f"final val_acc={last['val_acc']:.3f}; model written to {result.model_path}")
    return 0


def _predict(args) -> int:
    from .predict import Predictor

    predictor = Predictor(args.model)
    for image in args.images:
        print(image)
        for name, prob in predictor.predict(image, top_k=args.top_k):
            print(f"  {prob:7.2%}  {name}")
    return 0


def _inspect(args) -> int:
    from . import onnx as fonnx
    from .onnx.load import read_model
    from .onnx.support import format_support, op_support

    proto, _, _ = read_model(args.model)
    opsets = ", ".join(f"{o.domain or 'ai.onnx'} {o.version}" for o in proto.opset_import)
    init_names = {i.name for i in proto.graph.initializer}
    print(f"file: {args.model}")
    print(
        f"ir_version: {proto.ir_version}; opset: {opsets}; producer: "
        f"{proto.producer_name or '?'} {proto.producer_version}"
    )
    for kind, values in (("input", proto.graph.input), ("output", proto.graph.output)):
        for v in values:
            if v.name in init_names:
                continue
            dims = [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
            print(f"{kind}: {v.name} {dims}")
    rows = op_support(proto)
    print("ops: " + ", ".join(f"{r.name} x{r.nodes}" for r in rows))
    for line in format_support(rows):
        print(line)
    model = fonnx.load(args.model)  # an unsupported op is refused here, after the table
    n_params = sum(p.numel() for p in model.parameters())
    print(f"parameters: {n_params:,}")
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    print(
        "trainable after import: "
        + (", ".join(trainable) if trainable else "none (every imported weight is frozen)")
    )
    try:
        head_name, head = fonnx.find_head(model)
        print(f"head: {head_name} ({head.in_features} -> {head.out_features})")
    except FinetuneError:
        pass
    for key, value in getattr(model, "metadata", {}).items():
        print(f"metadata {key}: {str(value)[:100]}")
    return 0


def _export(args) -> int:
    from . import onnx as fonnx
    from .creation import zeros
    from .recipe import load_backbone, replace_head
    from .serialization import load

    model = load_backbone(args.model, progress=not args.quiet)
    if args.num_classes:
        replace_head(model, args.num_classes)
    if args.checkpoint:
        state = load(args.checkpoint)
        model.load_state_dict(state.get("model", state))
    fonnx.export(
        model,
        zeros(1, 3, args.image_size, args.image_size),
        args.out,
        opset_version=args.opset,
        fold_batchnorm=args.fold_batchnorm,
    )
    print(f"exported {args.out}")
    return 0


def _download(args) -> int:
    from .models import download

    path = download(args.name, dest=args.dest, progress=not args.quiet)
    print(path)
    return 0


def _demo_data(args) -> int:
    from .data.demo import make_shapes

    root = make_shapes(args.dir, n_per_class=args.n_per_class, size=args.size, seed=args.seed)
    print(f"wrote demo images to {root}/train and {root}/val")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="finetune", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="fine-tune a pretrained model on a folder of images")
    p.add_argument("--model", default="resnet18", help="resnet18 or a path to an .onnx file")
    p.add_argument("--data", required=True, help="folder with train/ and val/, or class folders")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", required=True, help="run folder for history, plot, checkpoint, model")
    p.add_argument("--augment", action="store_true", help="random crops and flips")
    p.add_argument("--resume", action="store_true", help="continue from the run's checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(run=_train)

    p = sub.add_parser("predict", help="classify images with an exported model")
    p.add_argument("--model", required=True)
    p.add_argument("images", nargs="+")
    p.add_argument("--top-k", type=int, default=5)
    p.set_defaults(run=_predict)

    p = sub.add_parser("inspect", help="ops, opset, inputs/outputs and parameters of an ONNX file")
    p.add_argument("model")
    p.set_defaults(run=_inspect)

    p = sub.add_parser("export", help="write a model (optionally a checkpoint) as ONNX")
    p.add_argument("--model", default="resnet18")
    p.add_argument("--checkpoint", help="checkpoint.npz from a training run")
    p.add_argument("--num-classes", type=int, help="replace the head before loading")
    p.add_argument("--out", required=True)
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--fold-batchnorm", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(run=_export)

    p = sub.add_parser("download", help="fetch a pretrained model into the cache")
    p.add_argument("name", choices=["resnet18"])
    p.add_argument("--dest", help="folder to put it in (default: the cache)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(run=_download)

    p = sub.add_parser("demo-data", help="write the synthetic shapes data set")
    p.add_argument("dir")
    p.add_argument("--n-per-class", type=int, default=60)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=_demo_data)
    return parser


def _report(err: BaseException) -> None:
    """One line on stderr, however many lines the message has (a download lists each mirror)."""
    text = " ".join(line.strip() for line in str(err).splitlines() if line.strip())
    print(f"finetune: error: {text}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except FinetuneError as err:
        if args.debug:
            raise
        from .train import TrainingInterrupted

        _report(err)
        return EXIT_INTERRUPTED if isinstance(err, TrainingInterrupted) else EXIT_ERROR
    except OSError as err:  # a full disk, a read-only or missing folder: previous files are kept
        if args.debug:
            raise
        _report(err)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("finetune: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
