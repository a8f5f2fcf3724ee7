"""`make example` offline: a ResNet-18 pretrained on the pretext shapes, then the seed's recipe.

The full example pretrains for about two minutes; these run the same code at tiny sizes (a few
steps, a few images) so the path itself is checked: the pretext set never holds a demo class,
the data-parallel step is the single-process step on each slice, averaged, the backbone file is
a valid ONNX ResNet-18 that imports frozen, the recipe fine-tunes, exports and predicts with it,
the output says which backbone was used, and a second run reuses the file.
"""

from __future__ import annotations

import importlib
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest

import finetune as ft
from finetune.data.demo import SHAPES, make_shapes
from finetune.data.pretext import PRETEXT_SHAPES, PretextShapes, draw_pretext
from finetune.errors import DataError

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _example(name: str):
    if str(EXAMPLES) not in sys.path:
        sys.path.insert(0, str(EXAMPLES))  # the helper processes import it by name too
    return importlib.import_module(name)


def _feature_side(model: onnx.ModelProto) -> int:
    """The side of the feature map the model's global pooling averages (ONNX shape inference)."""
    inferred = onnx.shape_inference.infer_shapes(model).graph
    dims = {v.name: v.type.tensor_type.shape.dim for v in inferred.value_info}
    (pool,) = [n for n in inferred.node if n.op_type == "GlobalAveragePool"]
    return dims[pool.input[0]][-1].dim_value


def test_pretext_set_shares_no_class_with_the_demo_set():
    assert len(PRETEXT_SHAPES) == len(set(PRETEXT_SHAPES)) >= 10
    assert not set(PRETEXT_SHAPES) & set(SHAPES)
    data = PretextShapes(2 * len(PRETEXT_SHAPES), size=32, seed=3)
    labels = [data[i][1] for i in range(len(data))]
    assert sorted(set(labels)) == list(range(len(PRETEXT_SHAPES)))  # every class is drawn
    assert data.classes == list(PRETEXT_SHAPES)


@pytest.mark.parametrize("textured", [0.0, 1.0])
def test_pretext_images_are_seeded_and_show_a_shape(textured):
    first = np.asarray(PretextShapes(5, seed=1, textured=textured)[4][0])
    assert np.array_equal(first, np.asarray(PretextShapes(5, seed=1, textured=textured)[4][0]))
    assert not np.array_equal(first, np.asarray(PretextShapes(5, seed=2, textured=textured)[4][0]))
    for kind in PRETEXT_SHAPES:  # the shape stands out from its background
        img = np.asarray(draw_pretext(kind, 64, np.random.default_rng(0), textured), dtype=float)
        assert img.shape == (64, 64, 3)
        assert img.std(axis=(0, 1)).sum() > 20


def test_pretext_set_refuses_bad_sizes():
    with pytest.raises(DataError, match="n must be a positive integer"):
        PretextShapes(0)
    with pytest.raises(DataError, match="size must be"):
        PretextShapes(4, size=4)
    with pytest.raises(DataError, match="textured must be a probability"):
        PretextShapes(4, textured=1.5)
    with pytest.raises(IndexError):
        PretextShapes(4)[4]


TINY = dict(width=4, image_size=32, steps=2, batch_size=6, seed=0)


def test_pretext_config_refuses_what_cannot_train():
    backbone = _example("pretext_backbone")
    with pytest.raises(ValueError, match="pretext steps must be at least 1, got 0"):
        backbone.PretextConfig(steps=0)
    with pytest.raises(ValueError, match="3 pretext processes need batches of at least"):
        backbone.PretextConfig(batch_size=2, processes=3)
    assert backbone._slices(backbone.PretextConfig(batch_size=7, processes=2)) == [(0, 4), (4, 7)]


def test_data_parallel_step_is_the_average_of_the_slices_steps():
    """Two processes, two steps: the weights and BatchNorm statistics are those of one process
    running each slice in turn, averaging the gradients and stepping AdamW on the schedule."""
    backbone = _example("pretext_backbone")
    config = backbone.PretextConfig(**TINY, processes=2)
    parallel, _ = backbone.train_pretext(config, log=None)

    slices = [backbone._Replica(config, part) for part in [(0, 3), (3, 6)]]
    first = slices[0]
    optimizer = ft.optim.AdamW(first.params, lr=config.max_lr, weight_decay=config.weight_decay)
    schedule = ft.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.max_lr, total_steps=config.steps, pct_start=0.25
    )
    threads = ft.get_num_threads()
    ft.set_num_threads(1)  # as each process runs: the same products, the same roundings
    try:
        for step in range(config.steps):
            grads = []
            for replica in slices:
                for mine, theirs in zip(replica.params, first.params, strict=True):
                    mine.data.numpy()[...] = theirs.data.numpy()
                replica.gradients(step)
                grads.append([p.grad.numpy().copy() for p in replica.params])
            three, six = np.float32(3), np.float32(6)  # each slice's mean, weighted by its size
            for p, a, b in zip(first.params, *grads, strict=True):
                p.grad = ft.tensor((a * three + b * three) / six)
            optimizer.step()
            schedule.step()
    finally:
        ft.set_num_threads(threads)
    expected = first.net.eval().state_dict()
    got = parallel.state_dict()
    assert expected.keys() == got.keys()
    for name, value in expected.items():
        np.testing.assert_allclose(got[name].numpy(), value.numpy(), rtol=1e-5, atol=1e-6)
    # the steps moved the weights: the comparison is not between two fresh networks
    fresh = backbone._network(config).state_dict()
    assert not np.allclose(fresh["conv1.weight"].numpy(), got["conv1.weight"].numpy())


def test_offline_example_pretrains_exports_and_fine_tunes(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FINETUNE_OFFLINE", "1")  # no download: the pretext path
    monkeypatch.setenv("FINETUNE_HOME", str(tmp_path / "cache"))
    demo_job = _example("demo_job")
    data, models, runs = tmp_path / "shapes", tmp_path / "models", tmp_path / "runs"
    make_shapes(data, n_per_class=4, size=32, seed=0, val_per_class=2)
    argv = ["--data", str(data), "--models", str(models), "--runs", str(runs), "--epochs", "2"]
    argv += ["--pretext-steps", "2", "--pretext-batch-size", "6", "--pretext-width", "4"]
    argv += ["--pretext-image-size", "32"]
    assert demo_job.main(argv) == 0
    out = capsys.readouterr().out

    # the backbone: a valid ONNX file of ResNet-18's layout at the pretext's size, in models/
    (backbone,) = models.glob("pretext-resnet18-*.onnx")
    assert backbone.name == "pretext-resnet18-w4-nopool-32px-2x6-seed0.onnx"
    graph = onnx.load(str(backbone))
    onnx.checker.check_model(graph)
    imported = ft.onnx.load(backbone)
    assert all(not p.requires_grad for p in imported.parameters())
    ops = [n.op_type for n in graph.graph.node]
    assert ops.count("Conv") == 20  # ResNet-18: stem, 16 in blocks, 3 projection shortcuts
    assert "MaxPool" not in ops  # small images: no pooling after the stem
    # stem /2, then /2 in each of layers 2-4: a 32-pixel input reaches the pooling at 2x2
    # (1x1 with the max pooling)
    assert _feature_side(graph) == 2
    with ft.no_grad():
        logits = imported(ft.zeros(2, 3, 32, 32))
    assert logits.shape == (2, len(PRETEXT_SHAPES))

    # the output says which backbone and why, then the recipe's epochs, then predictions
    assert "could not download" in out
    assert "pretrains itself on synthetic pretext images" in out
    assert "never a circle, square, triangle or star" in out
    assert (
        "starting model: a width-4 ResNet-18 pretrained offline on pretext shapes at 32x32" in out
    )
    assert out.index("pretext step 2/2") < out.index("epoch=1") < out.index("epoch=2")
    assert "predictions from" in out and "from a width-4 ResNet-18 pretrained offline" in out

    # the recipe ran on that file at its size, exported and predicted
    run = runs / "demo"
    history = json.loads((run / "history.json").read_text())
    assert [r["epoch"] for r in history] == [1, 2]
    model = onnx.load(str(run / "model.onnx"))
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[1:]]
    assert dims == [3, 32, 32]
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta["classes"]) == sorted(SHAPES)

    # a second run reuses the cached backbone instead of pretraining again
    mtime = backbone.stat().st_mtime_ns
    config = replace(demo_job.PretextConfig(), **TINY)
    again, _ = demo_job.starting_model(models, allow_download=False, pretext=config)
    assert again == backbone and backbone.stat().st_mtime_ns == mtime
    printed = capsys.readouterr().out
    assert f"reused {backbone}" in printed and "pretext step" not in printed


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--pretext-steps", "0"], "argument --pretext-steps: must be a positive integer, got '0'"),
        (["--pretext-seed", "-1"], "argument --pretext-seed: must be an integer >= 0, got '-1'"),
        (
            ["--pretext-batch-size", "2", "--pretext-processes", "3"],
            "3 pretext processes need batches of at least as many images, not 2",
        ),
    ],
)
def test_example_refuses_bad_pretext_options_before_writing_anything(
    tmp_path, capsys, argv, message
):
    demo_job = _example("demo_job")
    folders = ["--data", str(tmp_path / "shapes"), "--models", str(tmp_path / "models")]
    with pytest.raises(SystemExit) as stop:
        demo_job.main(argv + folders + ["--runs", str(tmp_path / "runs")])
    assert stop.value.code == 2  # argparse's usage error
    assert capsys.readouterr().err.splitlines()[-1].endswith(f": error: {message}")
    assert list(tmp_path.iterdir()) == []  # no demo data, no model folder
