"""Files from PyTorch's old exporter (opsets down to 6, which onnxruntime partly dropped): every
model under the ``onnx`` package's ``backend/test/data/pytorch-converted`` and
``pytorch-operator`` imports and reproduces the outputs stored beside it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import finetune as ft

DATA = Path(onnx.__file__).parent / "backend" / "test" / "data"
MODELS = sorted(
    p.parent
    for kind in ("pytorch-converted", "pytorch-operator")
    for p in (DATA / kind).glob("*/model.onnx")
)


def _tensors(folder: Path, prefix: str) -> list[np.ndarray]:
    files = sorted(folder.glob(f"{prefix}_*.pb"), key=lambda p: int(p.stem.rsplit("_", 1)[1]))
    return [numpy_helper.to_array(onnx.load_tensor(str(f))) for f in files]


def test_both_folders_are_there():
    assert len([m for m in MODELS if m.parent.name == "pytorch-converted"]) >= 80
    assert len([m for m in MODELS if m.parent.name == "pytorch-operator"]) >= 30


@pytest.mark.parametrize("folder", MODELS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_old_exporter_file_imports_and_reproduces_its_outputs(folder):
    model = ft.onnx.load(folder / "model.onnx")
    for data in sorted(folder.glob("test_data_set_*")):
        inputs, expected = _tensors(data, "input"), _tensors(data, "output")
        with ft.no_grad():
            got = model(*(ft.from_numpy(x) for x in inputs))
        got = got if isinstance(got, tuple) else (got,)
        assert len(got) == len(expected)
        for g, e in zip(got, expected):
            assert g.shape == e.shape
            # the tolerances onnx's own backend test uses for these files
            np.testing.assert_allclose(g.numpy(), e, rtol=1e-3, atol=1e-7)
