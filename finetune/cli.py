"""The ``finetune`` command: train, predict, inspect, export, download, demo-data.

Every option is checked when it is parsed; a bad value, and every error the user can fix (each
``FinetuneError``, and file system errors such as a full disk), comes out as one line on stderr
and exit code 2. ``--debug``, before or after the command, shows the traceback instead.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from .errors import DataError, FinetuneError

EXIT_ERROR = 2
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: what a shell reports for a writer whose reader left

DESCRIPTION = (
    "Fine-tune a pretrained image classifier (the model zoo's ResNet-18 or any ONNX file) on a "
    "folder of images, then predict with it, inspect it or export it as ONNX."
)
EPILOG = (
    "Run 'finetune COMMAND --help' for the options of a command. Errors you can fix are one line "
    "and exit code 2; --debug (before or after the command) shows the traceback."
)


class UsageError(FinetuneError):
    """An option whose value only the model or the data can show to be wrong (``--top-k``)."""


# -- option types: argparse calls these, and turns their message into a one-line error --------


def positive_int(text: str) -> int:
    """An integer of at least 1 (batch size, image size, epochs, class count)."""
    value = _parse(int, text, "a positive integer")
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def non_negative_int(text: str) -> int:
    """An integer of at least 0 (a seed, a worker count)."""
    value = _parse(int, text, "an integer >= 0")
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """A finite number above 0 (a learning rate)."""
    value = _parse(float, text, "a positive number")
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return value


def non_negative_float(text: str) -> float:
    """A finite number of at least 0 (momentum, weight decay)."""
    value = _parse(float, text, "a number >= 0")
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}")
    return value


def _parse(kind: type, text: str, what: str):
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None


# -- train -------------------------------------------------------------------------------------


def _train(args) -> int:
    from .recipe import run

    cluster = args.ray or ("local" if args.ray_workers else None)
    if cluster is not None:
        from .distributed.cluster import check_cluster

        check_cluster(cluster)
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
        overwrite=args.overwrite,
        head=args.head,
        cluster=cluster,
        ray_workers=args.ray_workers,
    )
    last = result.history[-1] if result.history else {}
    if last.get("val_acc") is not None:
        print(f"final val_acc={last['val_acc']:.3f}; model written to {result.model_path}")
    return 0


# -- predict -----------------------------------------------------------------------------------


def _predict(args) -> int:
    from .predict import Predictor

    predictor = Predictor(args.model)
    n_classes = predictor.num_classes
    if n_classes is not None:
        _check_top_k(args.top_k, n_classes, args.model)
    done = failed = 0
    for path, error in _image_paths(args.images):
        if error is None:
            try:
                ranked = predictor.predict(path, top_k=n_classes or sys.maxsize)
            except DataError as err:
                error = err
        if error is not None:
            _report(error)
            failed += 1
            continue
        if n_classes is None:  # a model that declares no class count: known after one image
            n_classes = len(ranked)
            _check_top_k(args.top_k, n_classes, args.model)
        print(path)
        for name, prob in ranked[: args.top_k or min(5, n_classes)]:
            print(f"  {prob:7.2%}  {name}")
        done += 1
    if failed:
        print(
            f"finetune: error: {failed} of {done + failed} images could not be classified",
            file=sys.stderr,
        )
        return EXIT_ERROR
    return 0


def _check_top_k(top_k: int | None, n_classes: int, model: str) -> None:
    if top_k is not None and not 1 <= top_k <= n_classes:
        raise UsageError(
            f"argument --top-k: must be between 1 and {n_classes} ({model} has {n_classes} "
            f"classes), got {top_k}"
        )


def _image_paths(arguments: list[str]) -> Iterator[tuple[str | None, FinetuneError | None]]:
    """Each file argument as given, each folder's images (recursively), in order; a missing path
    or an unreadable folder becomes an error in its place, so the others still run."""
    from .data.folder import IMG_EXTENSIONS, find_images

    for argument in arguments:
        if os.path.isdir(argument):
            try:
                found = find_images(argument)
            except DataError as error:
                yield None, error
                continue
            if not found:
                yield (
                    None,
                    DataError(
                        f"folder {argument} has no image files ({', '.join(IMG_EXTENSIONS)})"
                    ),
                )
            for path in found:
                yield path, None
        elif os.path.exists(argument):
            yield argument, None
        else:
            yield None, DataError(f"image file {argument} does not exist")


# -- inspect -----------------------------------------------------------------------------------


def _inspect(args) -> int:
    try:
        return _inspect_file(args.model)
    except FinetuneError as err:
        if args.model in str(err):
            raise
        text = str(err)
        for label in ("<ModelProto>", "<bytes>", "<model>"):  # what a file read in memory is called
            text = text.replace(label, args.model)
        try:
            named = type(err)(text if args.model in text else f"{args.model}: {text}")
        except TypeError:  # an error class that takes more than a message: keep it as it is
            raise err from None
        raise named from err


def _inspect_file(path: str) -> int:
    from . import onnx as fonnx
    from .onnx.load import from_model, read_model
    from .onnx.support import format_support, op_support

    proto, _, label = read_model(path)
    opsets = ", ".join(f"{o.domain or 'ai.onnx'} {o.version}" for o in proto.opset_import)
    init_names = {i.name for i in proto.graph.initializer}
    print(f"file: {path}")
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
    model = from_model(proto, label)  # an unsupported op is refused here, after the table
    print(f"parameters: {sum(p.numel() for p in model.parameters()):,}")
    buffers = _buffers(model)
    kinds = f" ({', '.join(sorted(buffers))}: state, not trained)" if buffers else ""
    print(f"buffers: {sum(buffers.values()):,}{kinds}")
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    print(
        "trainable after import: "
        + (", ".join(trainable) if trainable else "none (every imported weight is frozen)")
    )
    try:
        name, head = fonnx.find_head(model)
    except FinetuneError as err:
        print(f"head: none found ({_one_line(err)})")
    else:
        print(f"head: {name} = {head!r} (train replaces it with a new layer for your classes)")
    for key, value in getattr(model, "metadata", {}).items():
        print(f"metadata {key}: {str(value)[:100]}")
    return 0


def _buffers(model) -> Counter:
    """Elements of the saved, untrained state (BatchNorm running statistics) by kind, as
    PyTorch's ``named_buffers`` holds it; graph constants (shapes, indices) are not state."""
    params = {name for name, _ in model.named_parameters()}
    counts: Counter = Counter()
    for name, value in model.state_dict().items():
        if name not in params:
            counts[name.rpartition(".")[2]] += math.prod(value.shape)
    return counts


# -- export ------------------------------------------------------------------------------------


def _export(args) -> int:
    from . import onnx as fonnx
    from .creation import zeros
    from .recipe import load_backbone, replace_head
    from .serialization import load

    state = load(args.checkpoint) if args.checkpoint else None
    saved = state if isinstance(state, dict) else {}
    weights = saved.get("model", saved) if state is not None else None
    classes = _export_classes(args, saved)
    model = load_backbone(args.model, progress=not args.quiet)
    config = saved.get("config") if isinstance(saved.get("config"), dict) else {}
    head_node = args.head or config.get("head")  # the layer the run replaced, if it was named
    name, head = fonnx.find_head(model, head_node)
    num_classes = args.num_classes or (len(classes) if classes else None)
    if num_classes is None and weights is not None and f"{name}.weight" in weights:
        num_classes = int(weights[f"{name}.weight"].shape[0])  # the checkpoint's trained head
    if classes and num_classes != len(classes):
        raise UsageError(
            f"argument --num-classes: {num_classes} does not match the {len(classes)} class "
            f"names ({', '.join(classes)})"
        )
    own = dict(getattr(model, "metadata", None) or {})  # a source file's own classes, sizes
    replaced = num_classes is not None and num_classes != _out_features(head)
    if replaced:
        replace_head(model, num_classes, head_node)
        own.pop("classes", None)
    if weights is not None:
        model.load_state_dict(weights)
    metadata = {**own, **_preprocessing(args, saved, model)}
    if classes:
        metadata["classes"] = classes
    elif "classes" not in metadata and args.model == "resnet18" and not replaced:
        from .models import imagenet_classes

        metadata["classes"] = imagenet_classes()
    size = metadata["input_size"]
    fonnx.export(
        model.eval(),
        zeros(1, 3, size, size),
        args.out,
        opset_version=args.opset,
        fold_batchnorm=args.fold_batchnorm,
        metadata=metadata,
    )
    print(f"exported {args.out}")
    if "classes" not in metadata:
        print(
            "note: no class names were written (predict will print 'class 0', ...); give "
            "--classes or --data",
            file=sys.stderr,
        )
    return 0


def _out_features(head) -> int | None:
    return getattr(head, "out_features", None) or getattr(head, "out_channels", None)


def _checkpoint_metadata(saved: dict) -> dict:
    """Class names and preprocessing a training checkpoint carries, wherever it keeps them."""
    found = {}
    for part in (saved.get("metadata"), saved.get("preprocessing"), saved):
        if isinstance(part, dict):
            for key in ("classes", "mean", "std", "input_size", "resize"):
                if key in part and key not in found:
                    found[key] = part[key]
    return found


def _export_classes(args, saved: dict) -> list[str] | None:
    """Class names from ``--classes`` or ``--data``, else the checkpoint's; they must agree."""
    given = None
    if args.classes:
        source = Path(args.classes)
        text = source.read_text(encoding="utf-8") if source.is_file() else args.classes
        sep = "\n" if source.is_file() else ","
        given = [c.strip() for c in text.split(sep) if c.strip()]
        if len(given) < 2 or len(set(given)) != len(given):
            raise UsageError(f"argument --classes: needs at least two different names, got {given}")
    elif args.data:
        from .data import ImageFolder

        root = Path(args.data)
        if not root.is_dir():
            raise DataError(f"data folder {root} does not exist")
        folder = root / "train" if (root / "train").is_dir() else root
        given = ImageFolder(folder, min_classes=2).classes
    stored = _checkpoint_metadata(saved).get("classes")
    stored = [str(c) for c in stored] if stored else None
    if given and stored and given != stored:
        raise UsageError(
            f"the checkpoint {args.checkpoint} was trained on classes {stored}, not {given}"
        )
    return given or stored


def _preprocessing(args, saved: dict, model) -> dict:
    """What predict needs to feed the model: input size, resize, mean and std, from the options,
    else the checkpoint, else the source model's metadata or fixed input size, else ImageNet's."""
    from .data import transforms as T

    trained = _checkpoint_metadata(saved)
    if args.image_size and trained.get("input_size") not in (None, args.image_size):
        raise UsageError(
            f"argument --image-size: the checkpoint {args.checkpoint} was trained at "
            f"{trained['input_size']}, not {args.image_size}"
        )
    stored = {**_checkpoint_metadata(getattr(model, "metadata", None) or {}), **trained}
    size = args.image_size or int(stored.get("input_size") or _declared_size(model) or 224)
    same = size == stored.get("input_size") and "resize" in stored
    return {
        "mean": list(stored.get("mean", T.IMAGENET_MEAN)),
        "std": list(stored.get("std", T.IMAGENET_STD)),
        "input_size": size,
        "resize": int(stored["resize"]) if same else round(size * 256 / 224),
    }


def _declared_size(model) -> int | None:
    """The square input side an imported file fixes (``[1, 3, 224, 224]``), if it fixes one."""
    types = getattr(model, "input_types", ())
    shape = types[0].shape if types and types[0].shape else ()
    if len(shape) == 4 and isinstance(shape[2], int) and shape[2] == shape[3] and shape[2] > 0:
        return shape[2]
    return None


# -- download, demo-data -----------------------------------------------------------------------


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


# -- the parser --------------------------------------------------------------------------------


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Defaults in ``--help``, except for flags and options that have none."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or action.default == argparse.SUPPRESS:
            return action.help
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage block) in the ``finetune: error:`` form."""

    def error(self, message: str):
        self.exit(EXIT_ERROR, f"finetune: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    debug = argparse.ArgumentParser(add_help=False)
    debug.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,  # so that a --debug before the command is not reset here
        help="Show the full traceback of an error instead of one line.",
    )
    parser = _Parser(
        prog="finetune", description=DESCRIPTION, epilog=EPILOG, formatter_class=_HelpFormatter
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        help="Show the full traceback of an error instead of one line.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, summary: str):
        return sub.add_parser(
            name,
            help=summary,
            description=summary[0].upper() + summary[1:] + ".",
            parents=[debug],
            formatter_class=_HelpFormatter,
        )

    p = command("train", "fine-tune a pretrained model on a folder of images")
    p.add_argument(
        "--model",
        default="resnet18",
        help="The model to fine-tune: 'resnet18' (the model zoo's pretrained file, downloaded "
        "once) or a path to an .onnx classifier.",
    )
    p.add_argument(
        "--data",
        required=True,
        help="Folder with train/ and val/ class folders, or class folders split 80/20 here.",
    )
    p.add_argument(
        "--out", required=True, help="Run folder for the history, plot, checkpoint and model."
    )
    # options left out are None: the recipe's default in a new run, the run's own on --resume
    p.add_argument("--epochs", type=positive_int, help="Passes over the training set (default: 5).")
    p.add_argument("--lr", type=positive_float, help="SGD learning rate (default: 0.01).")
    p.add_argument("--momentum", type=non_negative_float, help="SGD momentum (default: 0.9).")
    p.add_argument(
        "--weight-decay", type=non_negative_float, help="SGD L2 weight decay (default: 0)."
    )
    p.add_argument("--batch-size", type=positive_int, help="Images per step (default: 32).")
    p.add_argument(
        "--image-size",
        type=positive_int,
        help="Side of the square the images are cropped to after resizing (default: the "
        "model's own input size when its file fixes one, else 224).",
    )
    p.add_argument(
        "--seed",
        type=non_negative_int,
        help="Seed of the head's initial weights, the split and the shuffling (default: 0).",
    )
    p.add_argument(
        "--workers", type=non_negative_int, default=2, help="Threads decoding images (0: none)."
    )
    p.add_argument(
        "--augment", action="store_true", default=None, help="Train on random crops and flips."
    )
    again = p.add_mutually_exclusive_group()
    again.add_argument(
        "--resume",
        action="store_true",
        help="Continue the run in --out from its checkpoint. Options left out keep the run's "
        "values; a new --epochs, --lr, --momentum or --weight-decay (and --batch-size at an epoch "
        "boundary) applies from where it resumes; a changed --model, --head, --data, "
        "--image-size, --augment or --seed is refused.",
    )
    again.add_argument(
        "--overwrite",
        action="store_true",
        help="Replace the run --out already holds (its checkpoint, history, plot and model); "
        "without --resume or --overwrite, a folder holding a run is refused.",
    )
    p.add_argument(
        "--head",
        metavar="NODE",
        help="The ONNX node (or module path) of the classifier layer to replace, for a model "
        "whose head is not found (default: the Gemm, MatMul or 1x1 Conv feeding the output).",
    )
    p.add_argument(
        "--ray",
        nargs="?",
        const="local",
        metavar="ADDRESS",
        help="Compute the frozen backbone's features on Ray actors (pip install "
        "'finetune[ray]'): a local Ray instance on this machine's cores, or the cluster at "
        "ADDRESS (host:6379 or ray://host:10001). See docs/distributed.md.",
    )
    p.add_argument(
        "--ray-workers",
        type=positive_int,
        metavar="N",
        help="Ray actors to use (default: one per CPU of the cluster); implies --ray on a local "
        "instance when --ray is not given.",
    )
    p.add_argument("--quiet", action="store_true", help="Show no progress bars.")
    p.set_defaults(run=_train)

    p = command("predict", "classify images with an exported model")
    p.add_argument("--model", required=True, help="An .onnx classifier, e.g. a run's model.onnx.")
    p.add_argument(
        "images",
        nargs="+",
        metavar="IMAGE",
        help="Image files, or folders searched recursively for images.",
    )
    p.add_argument(
        "--top-k",
        type=positive_int,
        default=None,
        help="How many of the most likely classes to print (default: 5, or every class of a "
        "model with fewer).",
    )
    p.set_defaults(run=_predict)

    p = command("inspect", "show an ONNX file's ops, opset, inputs, outputs, parameters and head")
    p.add_argument("model", help="The .onnx file.")
    p.set_defaults(run=_inspect)

    p = command("export", "write a model, with a training checkpoint's weights, as ONNX")
    p.add_argument(
        "--model",
        default="resnet18",
        help="The model the checkpoint was trained from: 'resnet18' or an .onnx file.",
    )
    p.add_argument("--checkpoint", help="A run's checkpoint.npz to load into the model.")
    p.add_argument(
        "--num-classes",
        type=positive_int,
        help="Classes of the new head (default: from the class names or the checkpoint).",
    )
    p.add_argument(
        "--classes",
        help="Class names written into the file for predict: 'cat,dog' or a file with one a line "
        "(default: the checkpoint's).",
    )
    p.add_argument(
        "--data",
        help="Take the class names from this training folder (as 'finetune train --data').",
    )
    p.add_argument("--out", required=True, help="The .onnx file to write.")
    p.add_argument("--opset", type=positive_int, default=17, help="ONNX opset version to write.")
    p.add_argument(
        "--image-size",
        type=positive_int,
        default=None,
        help="Input side the file declares and predict crops to (default: the checkpoint's, "
        "else 224).",
    )
    p.add_argument(
        "--fold-batchnorm",
        action="store_true",
        help="Fold BatchNorm layers into the convolutions before them.",
    )
    p.add_argument(
        "--head",
        metavar="NODE",
        help="The classifier layer to replace, as given to train --head (default: the "
        "checkpoint's, else the one found).",
    )
    p.add_argument("--quiet", action="store_true", help="Show no download progress.")
    p.set_defaults(run=_export)

    p = command("download", "fetch a pretrained model into the cache")
    p.add_argument("name", choices=["resnet18"], help="The model to fetch.")
    p.add_argument("--dest", help="Folder to put it in (default: the cache).")
    p.add_argument("--quiet", action="store_true", help="Show no download progress.")
    p.set_defaults(run=_download)

    p = command("demo-data", "write the synthetic shapes data set (circle, square, triangle, star)")
    p.add_argument("dir", help="Folder to write train/ and val/ into.")
    p.add_argument(
        "--n-per-class",
        type=positive_int,
        default=60,
        help="Training images per class (validation: a quarter, at least 2).",
    )
    p.add_argument("--size", type=positive_int, default=64, help="Image side in pixels.")
    p.add_argument(
        "--seed",
        type=non_negative_int,
        default=0,
        help="Seed: the same seed writes the same files.",
    )
    p.set_defaults(run=_demo_data)
    return parser


def _one_line(err: BaseException) -> str:
    return " ".join(line.strip() for line in str(err).splitlines() if line.strip())


def _report(err: BaseException) -> None:
    """One line on stderr, however many lines the message has (a download lists each mirror)."""
    print(f"finetune: error: {_one_line(err)}", file=sys.stderr)


def _quiet_stdout() -> None:
    """After the reader of stdout went away (``| head``): send what is left to /dev/null, so
    the interpreter's final flush raises nothing."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code = args.run(args)
        sys.stdout.flush()  # a closed pipe shows here, inside the handlers below
        return code
    except FinetuneError as err:
        if args.debug:
            raise
        from .train import TrainingInterrupted

        _report(err)
        return EXIT_INTERRUPTED if isinstance(err, TrainingInterrupted) else EXIT_ERROR
    except BrokenPipeError:  # the reader (head, less) has all it wants: stop without a word
        _quiet_stdout()
        return EXIT_BROKEN_PIPE
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
