"""The benchmark runs in a tiny configuration so it cannot rot (real figures: `make bench`)."""

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "compare.py"


def test_tiny_benchmark_runs_and_reports_every_measurement(tmp_path):
    out = tmp_path / "results.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--tiny", "--skip", "pytorch", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
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
