"""The benchmark runs in a tiny configuration so it cannot rot (real figures: `make bench`)."""

import importlib.util
import json
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "compare.py"


@pytest.fixture(scope="module")
def compare():
    """benchmarks/compare.py as a module (its helpers; no worker is started)."""
    spec = importlib.util.spec_from_file_location("bench_compare", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=600
    )


def test_tiny_benchmark_runs_and_reports_every_measurement(tmp_path):
    out = tmp_path / "results.json"
    proc = _bench("--tiny", "--skip", "pytorch", "--json", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = proc.stdout
    for row in ("forward_b1", "frozen_step", "full_step", "fit5", "import", "export"):
        assert f"| {row} |" in report
    assert "numpy float32 2048x2048 matmul" in report
    assert "pytorch: skipped by --skip" in report
    results = json.loads(out.read_text())["results"]
    assert results["forward_b1"]["finetune"]["times"][0] > 0
    assert "onnxruntime" in results["forward_b1"]
    assert results["frozen_step"]["finetune"]["peak_rss_mb"] > 0


def _tiny_classifier(path: Path) -> None:
    """A 3x8x8 image classifier: Conv, Relu, GlobalAveragePool, Flatten, Gemm; dynamic batch."""
    rng = np.random.default_rng(0)
    weights = {
        "w": rng.standard_normal((4, 3, 3, 3), dtype=np.float32),
        "b": rng.standard_normal(4, dtype=np.float32),
        "fc_w": rng.standard_normal((5, 4), dtype=np.float32),
        "fc_b": rng.standard_normal(5, dtype=np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["y"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 5])],
        [numpy_helper.from_array(v, k) for k, v in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, path)


def test_model_list_measures_an_onnx_file_and_skips_torchvision_without_pytorch(tmp_path):
    path = tmp_path / "tiny_net.onnx"
    _tiny_classifier(path)
    out = tmp_path / "results.json"
    proc = _bench(
        "--tiny", "--models", "mobilenet_v2", str(path), "--skip", "pytorch", "--json", str(out)
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = proc.stdout
    assert "| forward_b1 |" not in report  # no ResNet-18 section: resnet18 was not listed
    (row,) = [line for line in report.splitlines() if line.startswith("| tiny_net |")]
    assert " ms = " in row.split("|")[2]  # finetune / onnxruntime at batch 1
    assert "mobilenet_v2: PyTorch and torchvision not available, skipped" in report
    assert "Geomean of the 1 forward ratios to onnxruntime" in report
    measured = json.loads(out.read_text())["models"]["tiny_net"]["forward_b1"]
    assert set(measured) == {"finetune", "onnxruntime"}
    assert measured["finetune"]["times"][0] > 0


def test_an_unknown_model_name_is_refused_with_the_known_ones():
    proc = _bench("--tiny", "--models", "resnet_1000")
    assert proc.returncode == 2
    assert "unknown model 'resnet_1000'" in proc.stderr and "efficientnet_b0" in proc.stderr


def _result(ms: float, peak: float = 100.0) -> dict:
    return {"times": [ms / 1000], "peak_rss_mb": peak, "base_rss_mb": 50.0, "import_s": [0.2]}


def test_model_table_gives_ratios_geomean_and_targets(compare):
    results = {
        "net_a": {
            "forward_b1": {"finetune": _result(30), "onnxruntime": _result(10)},
            "forward_b8": {"finetune": _result(90), "onnxruntime": _result(90)},
            "frozen_step": {"finetune": _result(50, 200), "pytorch": _result(100, 400)},
        }
    }
    args = Namespace(batch=8, size=224, threads=2, rounds=1, repeats=1, warmup=0, budget=1.0)
    table = compare.format_model_table(results, {}, args, ["a note"], 60.0)
    (row,) = [line for line in table.splitlines() if line.startswith("| net_a |")]
    assert "30.0 / 10.0 ms = 3.00x" in row and "90.0 / 90.0 ms = 1.00x" in row
    assert "50.0 / 100 ms = 0.50x" in row and "200 / 400 MB = 0.50x" in row
    assert "Geomean of the 2 forward ratios to onnxruntime: 1.73x" in table  # sqrt(3 * 1)
    assert "every forward <= 2.0x onnxruntime: 1 of 2, NOT met by net_a forward_b1 3.00" in table
    assert "frozen-backbone step <= 1.0x PyTorch: 1 of 1, met" in table
    assert "note: a note" in table


def test_the_table_replaces_only_its_section_of_the_docs(compare, tmp_path):
    docs = tmp_path / "performance.md"
    docs.write_text("# Performance\n\nkept\n")
    compare.write_docs("first table", docs)
    compare.write_docs("second table", docs)
    text = docs.read_text()
    assert text.startswith("# Performance\n\nkept\n")
    assert "second table" in text and "first table" not in text
    assert text.count(compare.DOCS_START) == 1 and text.count(compare.DOCS_END) == 1
    docs.write_text(text + "\n## After\n\nalso kept\n")
    compare.write_docs("third table", docs)
    text = docs.read_text()
    assert "third table" in text and "second table" not in text and text.endswith("also kept\n")
