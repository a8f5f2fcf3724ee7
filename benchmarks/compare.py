"""ResNet-18 side by side: this library vs onnxruntime vs PyTorch, same weights, same threads.

    python benchmarks/compare.py                 # batch 8 and 1, 3x224x224 (make bench)
    python benchmarks/compare.py --tiny          # batch 1, 32x32, one repeat (runs in the tests)

Every measurement runs in a fresh worker process (so its peak resident set size is its own) and
reports the median of ``--repeats`` runs after ``--warmup`` runs, pooled over ``--rounds`` passes
of the whole sequence (the systems interleave, so a slow spell of the machine hits all of them).
Ratios are library / peer from the same run. Peers that are not installed are skipped with a note.
"""

from __future__ import annotations

import argparse
import json
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
FLOPS_PER_IMAGE_224 = 2 * 1.814e9  # multiply-adds of ResNet-18 at 224x224, times two


# -- measurement helpers (run inside a worker) --------------------------------------------------


def timed(fn, repeats: int, warmup: int) -> list[float]:
    """Seconds of each of ``repeats`` calls of ``fn`` after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


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
        import numpy  # noqa: F401  (OpenBLAS loads before finetune can set its thread timeout)

    # finetune first, as the README advises: see finetune/parallel.py
    import finetune as ft  # isort: skip
    import numpy as np

    from finetune import nn, optim

    ft.manual_seed(0)
    model = ft.models.resnet18(weights=cfg["onnx"])
    model.eval()
    rng = np.random.default_rng(0)
    x = ft.from_numpy(
        rng.standard_normal((cfg["batch"], 3, cfg["size"], cfg["size"]), dtype=np.float32)
    )
    y = ft.from_numpy(rng.integers(0, 10, cfg["batch"]))
    base = _current_rss_mb()
    if task == "forward":

        def run():
            with ft.no_grad():
                model(x)
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
    import numpy as np
    import onnxruntime as ort

    if task != "forward":
        raise ValueError(task)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = cfg["threads"]
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(cfg["onnx"], opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    x = np.random.default_rng(0).standard_normal(
        (cfg["batch"], 3, cfg["size"], cfg["size"]), dtype=np.float32
    )
    base = _current_rss_mb()
    times = timed(lambda: sess.run(None, {name: x}), cfg["repeats"], cfg["warmup"])
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
    x = torch.from_numpy(
        rng.standard_normal((cfg["batch"], 3, cfg["size"], cfg["size"]), dtype=np.float32)
    )
    y = torch.from_numpy(rng.integers(0, 10, cfg["batch"]))
    base = _current_rss_mb()
    if task == "forward":

        def run():
            with torch.no_grad():
                model(x)
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


WORKERS = {"finetune": lib_task, "onnxruntime": ort_task, "pytorch": torch_task}


# -- orchestration ------------------------------------------------------------------------------


def _available(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _thread_env(threads: int) -> dict:
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(threads)
    return env


def run_worker(system: str, task: str, cfg: dict) -> dict:
    proc = subprocess.run(
        [sys.executable, str(HERE), "--worker", system, task, json.dumps(cfg)],
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
    if "finetune" in systems:
        measure(
            f"forward_b{args.batch}_numpy_first",
            "finetune",
            "forward",
            batch=args.batch,
            numpy_first=True,
        )
    for task in ("frozen_step", "full_step"):
        for system in [s for s in systems if s != "onnxruntime"]:
            measure(task, system, task, batch=step_batch)
    for system in [s for s in systems if s != "onnxruntime"]:
        measure("fit5", system, "fit5", batch=args.batch, repeats=args.fit_repeats, warmup=0)
    for task in ("import", "import_resnet", "export"):
        measure(task, "finetune", task, batch=1, repeats=max(args.repeats, 1))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=5)
    # two: in a fresh process this library's second call still pays ~70 ms of page faults while
    # glibc moves the blocks freed by the first into its heap (docs/performance.md)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--fit-images", type=int, default=256)
    parser.add_argument("--fit-batch", type=int, default=32)
    parser.add_argument("--fit-repeats", type=int, default=3)
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="run the whole sequence this many times, interleaving the systems, and pool the "
        "times (the machine's speed drifts over minutes; pooling keeps ratios fair, and with "
        "three rounds one slow round cannot carry a median alone)",
    )
    parser.add_argument("--tiny", action="store_true", help="batch 1, 32x32, one repeat (CI)")
    parser.add_argument("--skip", default="", help="comma-separated systems to leave out")
    parser.add_argument("--json", help="also write the raw results here")
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        system, task, cfg = args.worker
        print(json.dumps(WORKERS[system](task, json.loads(cfg))))
        return 0
    if args.tiny:
        args.batch, args.size, args.repeats, args.warmup = 1, 32, 1, 0
        args.fit_images, args.fit_batch, args.fit_repeats = 8, 4, 1
        args.rounds = 1

    skip = set(filter(None, args.skip.split(",")))
    systems = ["finetune"]
    notes = []
    for name, module in (("onnxruntime", "onnxruntime"), ("pytorch", "torch")):
        if name in skip:
            notes.append(f"{name}: skipped by --skip")
        elif _available(module):
            systems.append(name)
        else:
            notes.append(f"{name}: not installed, skipped (pip install -e '.[bench]')")

    with tempfile.TemporaryDirectory() as tmp:
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
        results: dict = {}

        def measure(key, system, task, **over):
            result = run_worker(system, task, dict(common, **over))
            pooled = results.setdefault(key, {}).get(system)
            if pooled is None:
                results[key][system] = result
            else:  # a later round: pool the times, keep the highest peak
                pooled["times"] += result["times"]
                pooled["peak_rss_mb"] = max(pooled["peak_rss_mb"], result["peak_rss_mb"])
                pooled["base_rss_mb"] = min(pooled["base_rss_mb"], result["base_rss_mb"])

        for _round in range(args.rounds):
            run_sequence(args, systems, measure)
        gflops = numpy_matmul_gflops(args.threads)

    report = format_report(results, args, gflops, notes)
    print(report)
    if args.json:
        Path(args.json).write_text(
            json.dumps({"results": results, "numpy_gflops": gflops, "args": vars(args)}, indent=2)
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
                "numpy imported before finetune (no OpenBLAS thread timeout) |"
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


if __name__ == "__main__":
    sys.exit(main())
