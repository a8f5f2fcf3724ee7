"""``docs/onnx-ops.md``'s operator table is generated from the registry; this fails when the
committed file is stale (run ``make docs``)."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import onnx_ops_doc  # noqa: E402


def test_the_operator_table_is_up_to_date():
    text = onnx_ops_doc.DOC.read_text()
    assert onnx_ops_doc.BEGIN in text and onnx_ops_doc.END in text
    assert onnx_ops_doc.render(text) == text, "docs/onnx-ops.md is stale: run `make docs`"
