"""This library vs onnxruntime vs PyTorch, same weights, same threads: ResNet-18 in detail, then
torchvision's light architectures (the model list).

    python benchmarks/compare.py                 # ResNet-18 and every model (make bench)
    python benchmarks/compare.py --models mobilenet_v2 efficientnet_b0   # make bench MODELS=...
    python benchmarks/compare.py --models resnet18 path/to/model.onnx    # your own ONNX file
    python benchmarks/compare.py --tiny          # ResNet-18 at batch 1, 32x32 (runs in the tests)

``resnet18`` in the list runs the ResNet-18 section (built by this library, exported, loaded by
all three). Every other name is a torchvision model with seeded random weights, exported once by
PyTorch's legacy exporter (opset 17, dynamic batch) into ``--cache`` (``benchmarks/models.py``);
per model: the forward at batch 1 and 8, the frozen-backbone step (new 10-class head, SGD with
momentum) and, for the models the issue names, the full training step at batch 8, the frozen
step's peak memory and the import time. A path to an ``.onnx`` file is measured against
onnxruntime only. The model table goes into docs/performance.md between its markers
(``--no-docs`` to leave it). Without PyTorch and torchvision, the torchvision models are skipped
with a note. Every call gets another input (a few made in advance, taken in turn).

Every measurement runs in a fresh worker process (so its peak resident set size is its own) and
reports the median of ``--repeats`` runs after ``--warmup`` runs, pooled over ``--rounds`` passes
of the whole sequence (the systems interleave, so a slow spell of the machine hits all of them).
Ratios are library / peer from the same run. Peers that are not installed are skipped with a note.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()
DOCS = HERE.parent.parent / "docs" / "performance.md"
DOCS_START = "<!-- make bench: model table (benchmarks/compare.py writes between these lines) -->"
DOCS_END = "<!-- make bench: end of the model table -->"
# inputs made in advance per worker and taken in turn: no call sees the previous call's input
N_INPUTS = 3
FLOPS_PER_IMAGE_224 = 2 * 1.814e9  # multiply-adds of ResNet-18 at 224x224, times two


# -- measurement helpers (run inside a worker) --------------------------------------------------


def timed(fn, repeats: int, warmup: int, budget: float | None = None) -> list[float]:
    """Seconds of each of ``repeats`` calls of ``fn`` after ``warmup`` calls; with a ``budget``
    (seconds), no further call starts once the timed calls have taken that long in all."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if budget is not None and sum(times) >= budget:
            break
    return times


def _inputs(batch: int, shape, seed: int = 0) -> list:
    """``N_INPUTS`` different float32 batches of ``shape`` per sample, and labels for each."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return [
        (
            rng.standard_normal((batch, *shape), dtype=np.float32),
            rng.integers(0, 10, batch),
        )
        for _ in range(N_INPUTS)
    ]


def _rss_mb() -> float:
    """Peak resident set size of this process's own address space (VmHWM: unlike ru_maxrss,
    it does not inherit the parent's peak across fork and exec)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _current_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


# -- this library -------------------------------------------------------------------------------


def lib_task(task: str, cfg: dict) -> dict:
    if cfg.get("numpy_first"):
        import numpy  # noqa: F401  (OpenBLAS starts before finetune shortens its spin)

    import finetune as ft  # isort: skip
    import numpy as np

    from finetune import nn, optim

    ft.manual_seed(0)
    model = ft.models.resnet18(weights=cfg["onnx"])
    model.eval()
    rng = np.random.default_rng(0)
    shape = (3, cfg["size"], cfg["size"])
    batches = itertools.cycle(
        [(ft.from_numpy(x), ft.from_numpy(y)) for x, y in _inputs(cfg["batch"], shape)]
    )
    base = _current_rss_mb()
    if task == "forward":

        def run():
            with ft.no_grad():
                model(next(batches)[0])
    elif task in ("frozen_step", "full_step"):
        # imported weights arrive frozen; the full step trains every one of them
        for p in model.parameters():
            p.requires_grad = task == "full_step"
        if task == "full_step":
            model.train()
        model.fc = nn.Linear(512, 10)
        opt = optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
        loss_fn = nn.CrossEntropyLoss()

        def run():
            x, y = next(batches)
            opt.zero_grad()
            loss_fn(model(x), y).backward()
            opt.step()
    elif task == "fit5":
        from finetune.data import DataLoader, TensorDataset
        from finetune.train import fit

        n = cfg["fit_images"]
        images = ft.from_numpy(
            rng.standard_normal((n, 3, cfg["size"], cfg["size"]), dtype=np.float32)
        )
        labels = ft.from_numpy(rng.integers(0, 10, n))

        def run():
            net = ft.models.resnet18(weights=cfg["onnx"])
            for p in net.parameters():
                p.requires_grad = False
            net.fc = nn.Linear(512, 10)
            opt = optim.SGD(net.parameters(), lr=1e-2, momentum=0.9)
            loader = DataLoader(
                TensorDataset(images, labels), cfg["fit_batch"], shuffle=True, seed=0
            )
            fit(net, loader, opt, 5, progress=False, log=None)
    elif task == "import":

        def run():
            ft.onnx.load(cfg["onnx"])
    elif task == "import_resnet":

        def run():
            ft.models.resnet18(weights=cfg["onnx"])
    elif task == "export":
        out = Path(cfg["tmp"]) / "export_bench.onnx"
        example = ft.zeros(1, 3, cfg["size"], cfg["size"])

        def run():
            ft.onnx.export(model, example, out)
    else:
        raise ValueError(task)
    times = timed(run, cfg["repeats"], cfg["warmup"])
    return {"times": times, "peak_rss_mb": _rss_mb(), "base_rss_mb": base}


# -- onnxruntime ---------------------------------------------------------------------------------


def ort_task(task: str, cfg: dict) -> dict:
    import onnxruntime as ort

    if task != "forward":
        raise ValueError(task)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = cfg["threads"]
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(cfg["onnx"], opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    batches = itertools.cycle(
        _inputs(cfg["batch"], cfg.get("shape") or (3, cfg["size"], cfg["size"]))
    )
    base = _current_rss_mb()
    times = timed(
        lambda: sess.run(None, {name: next(batches)[0]}),
        cfg["repeats"],
        cfg["warmup"],
        cfg.get("budget"),
    )
    return {
        "times": times,
        "peak_rss_mb": _rss_mb(),
        "base_rss_mb": base,
        "version": ort.__version__,
    }


# -- PyTorch (a torchvision-layout ResNet-18 written here; torchvision is not needed) -----------


def torch_resnet18(torch, num_classes: int = 1000):
    nn = torch.nn

    class BasicBlock(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.relu = nn.ReLU(inplace=True)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.downsample = None
            if stride != 1 or cin != cout:
                self.downsample = nn.Sequential(
                    nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
                )

        def forward(self, x):
            identity = x if self.downsample is None else self.downsample(x)
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            return self.relu(out + identity)

    class ResNet18(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(64)
            self.relu = nn.ReLU(inplace=True)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            widths = [(64, 64, 1), (64, 128, 2), (128, 256, 2), (256, 512, 2)]
            for i, (cin, cout, stride) in enumerate(widths, start=1):
                setattr(
                    self,
                    f"layer{i}",
                    nn.Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)),
                )
            self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
            self.fc = nn.Linear(512, num_classes)

        def forward(self, x):
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            return self.fc(torch.flatten(self.avgpool(x), 1))

    return ResNet18()


def torch_task(task: str, cfg: dict) -> dict:
    import numpy as np
    import torch

    torch.set_num_threads(cfg["threads"])
    torch.manual_seed(0)
    weights = np.load(cfg["weights"])
    model = torch_resnet18(torch)
    model.load_state_dict({k: torch.from_numpy(weights[k]) for k in weights.files}, strict=False)
    model.eval()
    rng = np.random.default_rng(0)
    shape = (3, cfg["size"], cfg["size"])
    batches = itertools.cycle(
        [(torch.from_numpy(x), torch.from_numpy(y)) for x, y in _inputs(cfg["batch"], shape)]
    )
    base = _current_rss_mb()
    if task == "forward":

        def run():
            with torch.no_grad():
                model(next(batches)[0])
    elif task in ("frozen_step", "full_step"):
        if task == "frozen_step":
            for p in model.parameters():
                p.requires_grad = False
        else:
            model.train()
        model.fc = torch.nn.Linear(512, 10)
        opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
        loss_fn = torch.nn.CrossEntropyLoss()

        def run():
            x, y = next(batches)
            opt.zero_grad()
            loss_fn(model(x), y).backward()
            opt.step()
    elif task == "fit5":
        n = cfg["fit_images"]
        images = torch.from_numpy(
            rng.standard_normal((n, 3, cfg["size"], cfg["size"]), dtype=np.float32)
        )
        labels = torch.from_numpy(rng.integers(0, 10, n))

        def run():
            net = torch_resnet18(torch)
            net.load_state_dict(
                {k: torch.from_numpy(weights[k]) for k in weights.files}, strict=False
            )
            for p in net.parameters():
                p.requires_grad = False
            net.fc = torch.nn.Linear(512, 10)
            net.eval()  # the frozen backbone keeps its BatchNorm statistics, as in the library
            opt = torch.optim.SGD(net.parameters(), lr=1e-2, momentum=0.9)
            loss_fn = torch.nn.CrossEntropyLoss()
            gen = torch.Generator().manual_seed(0)
            for _epoch in range(5):
                order = torch.randperm(n, generator=gen)
                for i in range(0, n, cfg["fit_batch"]):
                    idx = order[i : i + cfg["fit_batch"]]
                    opt.zero_grad()
                    loss_fn(net(images[idx]), labels[idx]).backward()
                    opt.step()
    else:
        raise ValueError(task)
    times = timed(run, cfg["repeats"], cfg["warmup"])
    return {
        "times": times,
        "peak_rss_mb": _rss_mb(),
        "base_rss_mb": base,
        "version": torch.__version__,
    }


# -- the model list: one model per worker, the same three systems ------------------------------


def _sgd_step(opt, loss_fn, model, batches):
    def run():
        x, y = next(batches)
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()

    return run


def lib_model_task(task: str, cfg: dict) -> dict:
    """One model imported from ONNX: ``forward`` (eval, no_grad), ``frozen_step`` (the imported
    weights frozen as they arrive, a new 10-class head) or ``full_step`` (everything trainable,
    train mode)."""
    if cfg.get("numpy_first"):
        import numpy  # noqa: F401  (OpenBLAS starts before finetune shortens its spin)

    import finetune as ft  # isort: skip
    from finetune import nn, optim

    ft.manual_seed(0)
    t0 = time.perf_counter()
    model = ft.onnx.load(cfg["onnx"])
    import_s = time.perf_counter() - t0
    model.eval()
    batches = itertools.cycle(
        [(ft.from_numpy(x), ft.from_numpy(y)) for x, y in _inputs(cfg["batch"], cfg["shape"])]
    )
    base = _current_rss_mb()
    if task == "forward":

        def run():
            with ft.no_grad():
                model(next(batches)[0])
    elif task in ("frozen_step", "full_step"):
        model.replace_head(10)
        if task == "full_step":
            for p in model.parameters():
                p.requires_grad = True
            model.train()
        trainable = [p for p in model.parameters() if p.requires_grad]
        opt = optim.SGD(trainable, lr=1e-2, momentum=0.9)
        run = _sgd_step(opt, nn.CrossEntropyLoss(), model, batches)
    else:
        raise ValueError(task)
    times = timed(run, cfg["repeats"], cfg["warmup"], cfg.get("budget"))
    return {"times": times, "peak_rss_mb": _rss_mb(), "base_rss_mb": base, "import_s": [import_s]}


def torch_model_task(task: str, cfg: dict) -> dict:
    """The torchvision model the ONNX file was exported from, the same weights, PyTorch eager;
    ``export`` writes the ONNX file and the weights into the cache first."""
    sys.path.insert(0, str(HERE.parent))
    import models

    torch, torchvision, _ = models.import_torchvision()
    if task == "export":
        onnx_path, weights = models.export(cfg["model"], Path(cfg["cache"]))
        return {"onnx": str(onnx_path), "weights": str(weights)}
    torch.set_num_threads(cfg["threads"])
    torch.manual_seed(0)
    model = models.load(cfg["model"], cfg["weights"])
    batches = itertools.cycle(
        [(torch.from_numpy(x), torch.from_numpy(y)) for x, y in _inputs(cfg["batch"], cfg["shape"])]
    )
    base = _current_rss_mb()
    if task == "forward":

        def run():
            with torch.no_grad():
                model(next(batches)[0])
    elif task in ("frozen_step", "full_step"):
        if task == "frozen_step":  # frozen as the imported weights are, BatchNorm in eval
            for p in model.parameters():
                p.requires_grad = False
        else:
            model.train()
        models.replace_head(torch, model, 10)
        trainable = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.SGD(trainable, lr=1e-2, momentum=0.9)
        run = _sgd_step(opt, torch.nn.CrossEntropyLoss(), model, batches)
    else:
        raise ValueError(task)
    times = timed(run, cfg["repeats"], cfg["warmup"], cfg.get("budget"))
    return {
        "times": times,
        "peak_rss_mb": _rss_mb(),
        "base_rss_mb": base,
        "version": torch.__version__,
        "torchvision": torchvision.__version__,
    }


WORKERS = {"finetune": lib_task, "onnxruntime": ort_task, "pytorch": torch_task}
MODEL_WORKERS = {"finetune": lib_model_task, "onnxruntime": ort_task, "pytorch": torch_model_task}


# -- orchestration ------------------------------------------------------------------------------


def _available(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _thread_env(threads: int) -> dict:
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(threads)
    # import from cached bytecode as an installed package does: with this set (some sandboxes
    # do) every worker compiled the library's sources again, ~0.15 s of each model's import
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


# the interpreter of each system's workers: PyTorch may live in another environment
PYTHONS: dict[str, str] = {}


def _available_in(python: str, modules: list[str]) -> bool:
    """Whether ``python`` can import every one of ``modules`` (looked up, not imported)."""
    code = (
        "import importlib.util as u, sys; sys.exit(any(not u.find_spec(m) for m in sys.argv[1:]))"
    )
    return subprocess.run([python, "-c", code, *modules], capture_output=True).returncode == 0


def run_worker(system: str, task: str, cfg: dict) -> dict:
    proc = subprocess.run(
        [PYTHONS.get(system, sys.executable), str(HERE), "--worker", system, task, json.dumps(cfg)],
        capture_output=True,
        text=True,
        env=_thread_env(cfg["threads"]),
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{system} {task} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def numpy_matmul_gflops(threads: int, n: int = 2048) -> float:
    code = (
        "import numpy as np, time\n"
        f"a = np.random.rand({n}, {n}).astype(np.float32); b = a.copy(); a @ b\n"
        "ts = []\n"
        "for _ in range(5):\n"
        "    t = time.perf_counter(); a @ b; ts.append(time.perf_counter() - t)\n"
        f"print(2 * {n}**3 / sorted(ts)[2] / 1e9)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=_thread_env(threads),
        check=True,
    )
    return float(out.stdout.strip())


def prepare(tmp: Path, size: int) -> dict:
    """Build ResNet-18 with the library, export it, and save its weights for PyTorch."""
    import numpy as np

    import finetune as ft

    ft.manual_seed(0)
    model = ft.models.resnet18()
    model.eval()
    onnx_path = tmp / "resnet18.onnx"
    ft.onnx.export(model, ft.zeros(1, 3, size, size), onnx_path)
    weights = {k: v.numpy() for k, v in model.state_dict().items()}
    np.savez(tmp / "weights.npz", **weights)
    return {"onnx": str(onnx_path), "weights": str(tmp / "weights.npz"), "tmp": str(tmp)}


def median_ms(result: dict) -> float:
    return statistics.median(result["times"]) * 1000


def run_sequence(args, systems: list[str], measure) -> None:
    """Every measurement once, each system in turn."""
    for batch in sorted({args.batch, 1}, reverse=True):
        for system in systems:
            measure(f"forward_b{batch}", system, "forward", batch=batch)
    # BatchNorm in training mode needs more than one value per channel: at 32x32 the last
    # stage is 1x1, so the tiny configuration trains at batch 2
    step_batch = args.batch if args.batch > 1 or args.size >= 64 else 2
    for batch in sorted({args.batch, 1}, reverse=True):  # the same, numpy imported first
        measure(
            f"forward_b{batch}_numpy_first", "finetune", "forward", batch=batch, numpy_first=True
        )
    for task in ("frozen_step", "full_step"):
        for system in [s for s in systems if s != "onnxruntime"]:
            measure(task, system, task, batch=step_batch)
    for system in [s for s in systems if s != "onnxruntime"]:
        measure("fit5", system, "fit5", batch=args.batch, repeats=args.fit_repeats, warmup=0)
    for task in ("import", "import_resnet", "export"):
        measure(task, "finetune", task, batch=1, repeats=max(args.repeats, 1))


def _pool(store: dict, system: str, result: dict) -> None:
    """Add a worker's result to ``store[system]``: a later round's times and import times join
    the earlier ones; the highest peak memory and the lowest baseline are kept."""
    pooled = store.get(system)
    if pooled is None:
        store[system] = result
        return
    pooled["times"] += result["times"]
    pooled["peak_rss_mb"] = max(pooled["peak_rss_mb"], result["peak_rss_mb"])
    pooled["base_rss_mb"] = min(pooled["base_rss_mb"], result["base_rss_mb"])
    if "import_s" in result:
        pooled["import_s"] += result["import_s"]


def _onnx_input_shape(path: Path) -> tuple[int, ...]:
    """The per-sample shape of the ONNX file's first input (every axis but the batch fixed)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    given = {init.name for init in graph.initializer}
    first = next(i for i in graph.input if i.name not in given)
    dims = [
        d.dim_value if d.HasField("dim_value") else None for d in first.type.tensor_type.shape.dim
    ]
    if len(dims) < 2 or any(d is None or d < 1 for d in dims[1:]):
        raise SystemExit(
            f"{path}: input {first.name!r} has shape {dims}; the benchmark needs every axis but "
            "the first (the batch) fixed"
        )
    return tuple(dims[1:])


def model_specs(names: list[str], args, torch_ok: bool, notes: list[str]) -> list[dict]:
    """What to measure for each entry of the model list but ``resnet18`` (the ResNet-18 section):
    torchvision models are exported into the cache (when PyTorch is there), ONNX paths taken as
    they are."""
    import models

    specs = []
    for name in names:
        if name == "resnet18":
            continue
        path = Path(name)
        if name.endswith(".onnx") or path.exists():
            if not path.is_file():
                raise SystemExit(f"--models: no ONNX file at {name}")
            specs.append({"name": path.stem, "onnx": str(path), "shape": _onnx_input_shape(path)})
        elif not torch_ok:
            notes.append(f"{name}: PyTorch and torchvision not available, skipped")
        else:
            files = run_worker(
                "pytorch", "export", {"model": name, "cache": str(args.cache), "threads": 1}
            )
            specs.append(
                dict(
                    files,
                    name=name,
                    model=name,
                    shape=list(models.INPUT_SHAPE),
                    full_step=args.full_step_all or name in models.FULL_STEP_MODELS,
                )
            )
    return specs


def run_models(specs: list[dict], systems: list[str], args, store: dict) -> None:
    """One round over the model list: per model, each measurement by every system in turn."""
    for spec in specs:
        per_model = store.setdefault(spec["name"], {})
        peers = [s for s in systems if s != "pytorch" or "model" in spec]
        common = dict(
            spec,
            threads=args.threads,
            warmup=args.warmup,
            repeats=args.repeats,
            budget=args.budget,
        )

        def measure(key, system, task, common=common, per_model=per_model, **over):
            result = run_worker(system, task, dict(common, **over))
            _pool(per_model.setdefault(key, {}), system, result)

        for batch in sorted({args.batch, 1}, reverse=True):
            for system in peers:
                measure(f"forward_b{batch}", system, "forward", batch=batch)
            if args.numpy_first:
                measure(
                    f"forward_b{batch}_numpy_first",
                    "finetune",
                    "forward",
                    batch=batch,
                    numpy_first=True,
                )
        if "model" not in spec:
            continue
        tasks = ["frozen_step"] + (["full_step"] if spec["full_step"] else [])
        for task in tasks:
            for system in [s for s in peers if s != "onnxruntime"]:
                measure(task, system, task, batch=args.batch)


def main(argv=None) -> int:
    sys.path.insert(0, str(HERE.parent))
    import models

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models",
        nargs="+",
        metavar="NAME",
        help="torchvision model names, resnet18 (the ResNet-18 section) or paths to .onnx files; "
        f"default: resnet18 {' '.join(models.DEFAULT_MODELS)} (with --tiny: resnet18)",
    )
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224, help="ResNet-18 section's image size")
    parser.add_argument("--repeats", type=int, default=5)
    # two: in a fresh process this library's second call still pays ~70 ms of page faults while
    # glibc moves the blocks freed by the first into its heap (docs/performance.md)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument(
        "--budget",
        type=float,
        default=2.0,
        help="model list: a worker starts no further timed call once its timed calls took this "
        "many seconds (slow models get fewer repeats, so the default run stays short)",
    )
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--fit-images", type=int, default=256)
    parser.add_argument("--fit-batch", type=int, default=32)
    # one per round: PyTorch's 5-epoch loop takes half a minute a run
    parser.add_argument("--fit-repeats", type=int, default=1)
    parser.add_argument(
        "--rounds",
        type=int,
        default=2,
        help="run the whole sequence this many times, interleaving the systems, and pool the "
        "times (the machine's speed drifts over minutes; pooling keeps ratios fair; three "
        "rounds keep one slow round from carrying a median alone, two keep the default run of "
        "every model near a quarter of an hour)",
    )
    parser.add_argument("--tiny", action="store_true", help="ResNet-18 at batch 1, 32x32 (CI)")
    parser.add_argument("--skip", default="", help="comma-separated systems to leave out")
    parser.add_argument(
        "--numpy-first",
        action="store_true",
        help="model list: also time this library's forwards with numpy imported before it",
    )
    parser.add_argument(
        "--full-step-all", action="store_true", help="the full training step for every model"
    )
    parser.add_argument(
        "--cache",
        type=Path,
        default=Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
        / "finetune"
        / "bench",
        help="where the exported torchvision models are kept between runs",
    )
    parser.add_argument(
        "--torch-python",
        default=sys.executable,
        help="the Python that runs PyTorch and torchvision (default: this one)",
    )
    parser.add_argument("--no-docs", action="store_true", help="leave docs/performance.md alone")
    parser.add_argument("--json", help="also write the raw results here")
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        system, task, cfg = args.worker
        cfg = json.loads(cfg)
        workers = MODEL_WORKERS if "shape" in cfg or "model" in cfg else WORKERS
        print(json.dumps(workers[system](task, cfg)))
        return 0
    if args.tiny:
        args.batch, args.size, args.repeats, args.warmup = 1, 32, 1, 0
        args.fit_images, args.fit_batch, args.fit_repeats = 8, 4, 1
        args.rounds = 1
    if args.models is None:
        args.models = ["resnet18"] if args.tiny else ["resnet18", *models.DEFAULT_MODELS]
    for name in args.models:
        if (
            name not in models.KNOWN_MODELS
            and not name.endswith(".onnx")
            and not Path(name).exists()
        ):
            parser.error(
                f"unknown model {name!r}: one of {', '.join(models.KNOWN_MODELS)} or an .onnx file"
            )
    PYTHONS["pytorch"] = args.torch_python

    skip = set(filter(None, args.skip.split(",")))
    systems = ["finetune"]
    notes = []
    for name, modules in (("onnxruntime", ["onnxruntime"]), ("pytorch", ["torch"])):
        if name in skip:
            notes.append(f"{name}: skipped by --skip")
        elif _available_in(PYTHONS.get(name, sys.executable), modules):
            systems.append(name)
        else:
            notes.append(f"{name}: not installed, skipped (pip install -e '.[bench]')")
    torch_ok = "pytorch" in systems and _available_in(args.torch_python, ["torchvision"])
    started = time.perf_counter()
    specs = model_specs(args.models, args, torch_ok, notes)

    with tempfile.TemporaryDirectory() as tmp:
        results: dict = {}
        model_results: dict = {}
        resnet = "resnet18" in args.models
        if resnet:
            base = prepare(Path(tmp), args.size)
            common = dict(
                base,
                size=args.size,
                threads=args.threads,
                warmup=args.warmup,
                repeats=args.repeats,
                fit_images=args.fit_images,
                fit_batch=args.fit_batch,
            )

            def measure(key, system, task, **over):
                result = run_worker(system, task, dict(common, **over))
                _pool(results.setdefault(key, {}), system, result)

        for _round in range(args.rounds):
            if resnet:
                run_sequence(args, systems, measure)
            run_models(specs, systems, args, model_results)
        gflops = numpy_matmul_gflops(args.threads)

    report = []
    if resnet:  # the notes go under the model table, which docs/performance.md keeps
        report.append(format_report(results, args, gflops, []))
    table = format_model_table(model_results, results, args, notes, time.perf_counter() - started)
    report.append(table)
    print("\n\n".join(report))
    if not args.no_docs and not args.tiny and model_results:
        write_docs(table)
        print(f"\n(written into {DOCS})")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "results": results,
                    "models": model_results,
                    "numpy_gflops": gflops,
                    "args": {
                        k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()
                    },
                },
                indent=2,
            )
        )
    return 0


TARGETS = {
    "forward_b8": ("onnxruntime", 2.0, "<= 2.0x onnxruntime"),
    "frozen_step": ("pytorch", 1.0, "no slower than PyTorch"),
    "full_step": ("pytorch", 1.5, "<= 1.5x PyTorch"),
    "fit5": ("pytorch", 0.25, ">= 4x faster than PyTorch"),
}


def format_report(results: dict, args, gflops: float, notes: list[str]) -> str:
    import numpy as np

    import finetune as ft

    lines = [
        f"# ResNet-18, float32, 3x{args.size}x{args.size}, batch {args.batch}, "
        f"{args.threads} thread(s); median of {args.rounds} round(s) x {args.repeats} runs, each "
        f"worker after {args.warmup} warm-up run(s), systems interleaved",
        f"machine: {platform.machine()} {platform.processor() or ''} {os.cpu_count()} cores; "
        f"python {platform.python_version()}; numpy {np.__version__}; finetune {ft.__version__}",
        f"numpy float32 2048x2048 matmul: {gflops:.0f} GFLOP/s (the machine's ceiling here)",
        f"threads: OMP/OPENBLAS/MKL_NUM_THREADS={args.threads} in every worker; PyTorch "
        f"set_num_threads({args.threads}); onnxruntime intra_op={args.threads}, inter_op=1",
        "",
        "| measurement | finetune | onnxruntime | pytorch | finetune / onnxruntime "
        "| finetune / pytorch | target |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, per in results.items():
        lib = per.get("finetune")
        cells = []
        for system in ("finetune", "onnxruntime", "pytorch"):
            cells.append(f"{median_ms(per[system]):.1f} ms" if system in per else "-")
        ratios = []
        for peer in ("onnxruntime", "pytorch"):
            ratios.append(f"{median_ms(lib) / median_ms(per[peer]):.2f}x" if peer in per else "-")
        if key.endswith("_numpy_first"):  # the same forward, only numpy imported first
            per = dict(results[key.removesuffix("_numpy_first")], finetune=lib)
            cells = [f"{median_ms(lib):.1f} ms", "-", "-"]
            ratios = [
                f"{median_ms(lib) / median_ms(per[peer]):.2f}x" if peer in per else "-"
                for peer in ("onnxruntime", "pytorch")
            ]
            lines.append(
                f"| {key} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " | "
                "numpy imported before finetune (its OpenBLAS workers restarted at import) |"
            )
            continue
        target = TARGETS.get(key if key != f"forward_b{args.batch}" else "forward_b8")
        verdict = ""
        if target and target[0] in per:
            ratio = median_ms(lib) / median_ms(per[target[0]])
            verdict = f"{target[2]}: {'met' if ratio <= target[1] else 'NOT met'}"
            if key.startswith("forward") and "pytorch" in per:
                vs_torch = median_ms(lib) / median_ms(per["pytorch"])
                verdict += f"; no slower than PyTorch: {'met' if vs_torch <= 1 else 'NOT met'}"
        lines.append(
            f"| {key} | " + " | ".join(cells) + " | " + " | ".join(ratios) + f" | {verdict} |"
        )
    fwd = results.get(f"forward_b{args.batch}", {}).get("finetune")
    if fwd:
        rate = FLOPS_PER_IMAGE_224 * (args.size / 224) ** 2 * args.batch / (median_ms(fwd) / 1000)
        lines.append("")
        share = rate / 1e9 / gflops
        lines.append(
            f"finetune forward: {rate / 1e9:.0f} GFLOP/s ({share:.0%} of numpy's "
            f"matmul; target >= 60%: {'met' if share >= 0.6 else 'NOT met'})"
        )
        full = results.get("full_step", {}).get("finetune")
        if full:
            ratio = median_ms(full) / median_ms(fwd)
            lines.append(
                f"finetune full training step / forward: {ratio:.2f}x "
                f"(target <= 3.5x: {'met' if ratio <= 3.5 else 'NOT met'})"
            )
    lines.append("")
    lines.append("| peak memory (RSS) | finetune | pytorch | finetune / pytorch |")
    lines.append("|---|---|---|---|")
    for key in ("frozen_step", "full_step"):
        per = results.get(key, {})
        if "finetune" not in per:
            continue
        lib = per["finetune"]["peak_rss_mb"]
        peer = per.get("pytorch", {}).get("peak_rss_mb")
        lines.append(
            f"| {key} | {lib:.0f} MB | "
            + (f"{peer:.0f} MB | {lib / peer:.2f}x |" if peer else "- | - |")
        )
        lib_d = lib - per["finetune"]["base_rss_mb"]
        peer_d = (peer - per["pytorch"]["base_rss_mb"]) if peer else None
        lines.append(
            f"| {key}, above the process's baseline | {lib_d:.0f} MB | "
            + (f"{peer_d:.0f} MB | {lib_d / peer_d:.2f}x |" if peer_d else "- | - |")
        )
    for note in notes:
        lines.append(f"note: {note}")
    return "\n".join(lines)


# -- the model table ----------------------------------------------------------------------------

MODEL_TARGETS = {  # issue 18
    "forward": 2.0,  # every forward <= 2.0x onnxruntime
    "geomean": 1.5,  # their geomean <= 1.5x
    "frozen_step": 1.0,  # <= PyTorch eager
    "full_step": 1.2,
    "memory": 1.0,  # the frozen step's peak memory <= PyTorch's
    "import_s": 1.0,
}


def _ms(value: float) -> str:
    return f"{value:.0f}" if value >= 100 else f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def _ratio(per: dict, peer: str) -> float | None:
    if "finetune" not in per or peer not in per:
        return None
    return median_ms(per["finetune"]) / median_ms(per[peer])


def _ratio_cell(per: dict | None, peer: str) -> str:
    ratio = _ratio(per or {}, peer)
    if ratio is None:
        return "-"
    return f"{_ms(median_ms(per['finetune']))} / {_ms(median_ms(per[peer]))} ms = {ratio:.2f}x"


def _memory_cell(per: dict | None) -> str:
    per = per or {}
    if "finetune" not in per or "pytorch" not in per:
        return "-"
    lib, peer = per["finetune"]["peak_rss_mb"], per["pytorch"]["peak_rss_mb"]
    return f"{lib:.0f} / {peer:.0f} MB = {lib / peer:.2f}x"


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    memory = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(
                (line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu
            )
        with open("/proc/meminfo") as f:
            kb = int(next(line for line in f if line.startswith("MemTotal")).split()[1])
        memory = f", {kb / 2**20:.0f} GiB"
    except (OSError, StopIteration, ValueError):
        pass
    return f"{platform.machine()} {cpu}, {os.cpu_count()} cores{memory}"


def _versions(model_results: dict, resnet: dict) -> str:
    """numpy's, onnxruntime's and PyTorch's versions as the workers reported them."""
    import numpy as np

    import finetune as ft

    found = {"numpy": np.__version__, "finetune": ft.__version__}
    tables = [resnet, *model_results.values()]
    for per_key in (per for table in tables for per in table.values()):
        for system, field, label in (
            ("onnxruntime", "version", "onnxruntime"),
            ("pytorch", "version", "PyTorch"),
            ("pytorch", "torchvision", "torchvision"),
        ):
            if field in per_key.get(system, {}):
                found.setdefault(label, per_key[system][field])
    blas = ""
    try:
        import threadpoolctl

        info = threadpoolctl.threadpool_info()
        blas = ", ".join(
            f"{i['internal_api']} {i['version']}" for i in info if i["user_api"] == "blas"
        )
    except ImportError:
        pass
    return "; ".join(f"{k} {v}" for k, v in found.items()) + (f" ({blas})" if blas else "")


def _geomean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


def format_model_table(
    model_results: dict, resnet: dict, args, notes: list[str], seconds: float
) -> str:
    """The model table: medians, ratios from this run, the geomean of the forward ratios to
    onnxruntime and which of the issue's targets were met; the machine, versions and date."""
    rows = dict(model_results)
    if resnet and args.batch == 8 and args.size == 224:
        rows = {"resnet18 (ResNet-18 section)": resnet, **rows}
    lines = []
    if rows:
        when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
        lines += [
            f"Model table of `make bench` ({when}): float32, 3x224x224 (an ONNX file: its own "
            f"input size), {args.threads} thread(s) for every system; medians of "
            f"{args.rounds} round(s), each worker timing "
            f"up to {args.repeats} calls ({args.budget:.0f} s at most) after {args.warmup} "
            "warm-up call(s); systems interleaved, a different input on every call; the whole "
            f"run took {seconds / 60:.1f} min.",
            f"Machine: {_machine()}; python {platform.python_version()}; "
            f"{_versions(model_results, resnet)}.",
            "",
            "| model | forward b1, finetune / onnxruntime | b1, finetune / PyTorch "
            f"| forward b{args.batch} / onnxruntime | b{args.batch} / PyTorch "
            f"| frozen-backbone step b{args.batch} / PyTorch | full step b{args.batch} / PyTorch "
            "| peak RSS, frozen step / PyTorch | import |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
    forward_ratios, verdicts = [], {key: [] for key in MODEL_TARGETS}
    for name, per in rows.items():
        cells = []
        for key in dict.fromkeys(("forward_b1", f"forward_b{args.batch}")):
            for peer in ("onnxruntime", "pytorch"):
                cells.append(_ratio_cell(per.get(key), peer))
            ratio = _ratio(per.get(key, {}), "onnxruntime")
            if ratio is not None:
                forward_ratios.append(ratio)
                verdicts["forward"].append((f"{name} {key}", ratio))
        for key in ("frozen_step", "full_step"):
            cells.append(_ratio_cell(per.get(key), "pytorch"))
            ratio = _ratio(per.get(key, {}), "pytorch")
            if ratio is not None:
                verdicts[key].append((name, ratio))
        cells.append(_memory_cell(per.get("frozen_step")))
        frozen = per.get("frozen_step", {})
        if "finetune" in frozen and "pytorch" in frozen:
            verdicts["memory"].append(
                (name, frozen["finetune"]["peak_rss_mb"] / frozen["pytorch"]["peak_rss_mb"])
            )
        loads = per.get("forward_b1", {}).get("finetune", {}).get("import_s")
        if loads is None and "import" in per:  # the ResNet-18 section times it on its own
            loads = per["import"]["finetune"]["times"]
        if loads:
            seconds_ = statistics.median(loads)
            cells.append(f"{seconds_ * 1000:.0f} ms")
            verdicts["import_s"].append((name, seconds_))
        else:
            cells.append("-")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if forward_ratios:
        geomean = _geomean(forward_ratios)
        verdicts["geomean"].append(("all forwards", geomean))
        lines += [
            "",
            f"Geomean of the {len(forward_ratios)} forward ratios to onnxruntime: {geomean:.2f}x "
            f"(batch 1: {_geomean([r for n, r in verdicts['forward'] if n.endswith('b1')]):.2f}x).",
        ]
        wording = {
            "forward": "every forward <= 2.0x onnxruntime",
            "geomean": "their geomean <= 1.5x",
            "frozen_step": "frozen-backbone step <= 1.0x PyTorch",
            "full_step": "full training step <= 1.2x PyTorch",
            "memory": "peak memory of the frozen step <= PyTorch's",
            "import_s": "import under 1 s",
        }
        lines.append("Targets (issue 18):")
        for key, limit in MODEL_TARGETS.items():
            measured = verdicts[key]
            if not measured:
                continue
            missed = [f"{n} {r:.2f}" for n, r in measured if r > limit]
            state = "met" if not missed else f"NOT met by {', '.join(missed)}"
            lines.append(
                f"- {wording[key]}: {len(measured) - len(missed)} of {len(measured)}, {state}"
            )
    order = [
        (name, key)
        for name, per in model_results.items()
        for key in per
        if key.endswith("_numpy_first")
    ]
    if order:
        lines += [
            "",
            "| numpy imported first | finetune first | numpy first | ratio |",
            "|---|---|---|---|",
        ]
        for name, key in order:
            first = median_ms(model_results[name][key.removesuffix("_numpy_first")]["finetune"])
            numpy_first = median_ms(model_results[name][key]["finetune"])
            lines.append(
                f"| {name} {key.removesuffix('_numpy_first')} | {_ms(first)} ms "
                f"| {_ms(numpy_first)} ms | {numpy_first / first:.2f}x |"
            )
    if notes:
        lines.append("")
        lines += [f"note: {note}" for note in notes]
    return "\n".join(lines)


def write_docs(table: str, path: Path = DOCS) -> None:
    """Put ``table`` between the markers of ``path`` (a new section at the end if they are
    missing), leaving the rest of the file as it is."""
    text = path.read_text()
    block = f"{DOCS_START}\n{table}\n{DOCS_END}"
    if DOCS_START in text and DOCS_END in text:
        head, rest = text.split(DOCS_START, 1)
        text = head + block + rest.split(DOCS_END, 1)[1]
    else:
        text = text.rstrip() + "\n\n## The model table (`make bench`)\n\n" + block + "\n"
    path.write_text(text)


if __name__ == "__main__":
    sys.exit(main())
