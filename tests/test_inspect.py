"""``finetune inspect`` names every operator with the schema version the file's opset selects,
whether it is supported and whether gradients flow through it, before importing anything."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from finetune.cli import main


def _model(path, nodes, opsets=(("", 17),)):
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [onnx.numpy_helper.from_array(np.ones((4, 4), np.float32), "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets])
    onnx.save(model, path)
    return str(path)


def _row(out: str, op: str) -> list[str]:
    return next(line.split() for line in out.splitlines() if line.split()[:1] == [op])


def test_inspect_tables_every_op_with_schema_support_and_gradient(tmp_path, capsys):
    path = _model(
        tmp_path / "m.onnx",
        [
            helper.make_node("MatMul", ["x", "w"], ["h"]),
            helper.make_node("ArgMax", ["h"], ["i"], axis=1, keepdims=1),
            helper.make_node("Cast", ["i"], ["f"], to=TensorProto.FLOAT),
            helper.make_node("Add", ["h", "f"], ["y"]),
        ],
    )
    assert main(["inspect", path]) == 0
    out = capsys.readouterr().out
    assert _row(out, "MatMul") == ["MatMul", "1", "13", "yes", "yes"]
    assert _row(out, "ArgMax") == ["ArgMax", "1", "13", "yes", "no"]
    assert _row(out, "Add") == ["Add", "1", "14", "yes", "yes"]
    assert "parameters: 16" in out


def test_inspect_names_an_unsupported_op_then_fails_in_one_line(tmp_path, capsys):
    path = _model(
        tmp_path / "custom.onnx",
        [helper.make_node("Fancy", ["x"], ["y"], domain="com.example")],
        opsets=(("", 17), ("com.example", 1)),
    )
    assert main(["inspect", path]) == 2
    captured = capsys.readouterr()
    assert _row(captured.out, "com.example.Fancy") == ["com.example.Fancy", "1", "-", "NO", "-"]
    error = captured.err.strip().splitlines()
    assert len(error) == 1 and "com.example.Fancy" in error[0] and "custom.onnx" in error[0]
