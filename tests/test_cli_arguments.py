"""Every command-line option is checked when it is parsed: a bad value is one line naming the
option and the value, exit code 2, no traceback. ``--debug`` works before or after the command,
``--help`` shows defaults, and data sets need two classes and survive symlink loops."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import pytest

from finetune.cli import build_parser, main
from finetune.data import ImageFolder
from finetune.data.demo import make_shapes
from finetune.errors import DataError

BAD_VALUES = [
    ("train", "--batch-size", "0"),
    ("train", "--batch-size", "-4"),
    ("train", "--batch-size", "2.5"),
    ("train", "--image-size", "0"),
    ("train", "--epochs", "0"),
    ("train", "--lr", "0"),
    ("train", "--lr", "-0.1"),
    ("train", "--lr", "nan"),
    ("train", "--lr", "inf"),
    ("train", "--lr", "fast"),
    ("train", "--momentum", "-0.9"),
    ("train", "--momentum", "nan"),
    ("train", "--weight-decay", "-1e-4"),
    ("train", "--weight-decay", "inf"),
    ("train", "--seed", "-1"),
    ("train", "--workers", "-2"),
    ("export", "--num-classes", "0"),
    ("export", "--num-classes", "-1"),
    ("export", "--image-size", "-224"),
    ("export", "--opset", "0"),
    ("demo-data", "--size", "0"),
    ("demo-data", "--n-per-class", "0"),
    ("demo-data", "--n-per-class", "-5"),
    ("predict", "--top-k", "0"),
    ("predict", "--top-k", "-1"),
]

REQUIRED = {
    "train": ["--data", "d", "--out", "o"],
    "export": ["--out", "m.onnx"],
    "demo-data": ["d"],
    "predict": ["--model", "m.onnx", "a.png"],
}


@pytest.mark.parametrize("command, option, value", BAD_VALUES)
def test_a_bad_value_is_one_line_naming_option_and_value_with_exit_code_2(
    command, option, value, capsys
):
    with pytest.raises(SystemExit) as exit_info:
        main([command, *REQUIRED[command], f"{option}={value}"])
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith(f"finetune: error: argument {option}: must be ")
    assert repr(value) in lines[0] and f"finetune {command} --help" in lines[0]
    assert captured.out == ""


def test_bad_values_through_the_real_command_give_no_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "finetune", "train", "--data", str(tmp_path), "--out", "o"]
        + ["--lr", "-1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr == (
        "finetune: error: argument --lr: must be a finite number > 0, got '-1' "
        "(see 'finetune train --help')\n"
    )
    assert not (tmp_path / "o").exists()


def test_a_missing_required_option_is_one_line_too(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--data", "d"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == (
        "finetune: error: the following arguments are required: --out "
        "(see 'finetune train --help')\n"
    )


def test_demo_data_too_small_to_draw_is_a_one_line_data_error(tmp_path, capsys):
    assert main(["demo-data", str(tmp_path / "d"), "--size", "4"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["finetune: error: size must be at least 8 pixels for a visible shape, got 4"]
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"n_per_class": 0}, "n_per_class must be a positive integer, got 0"),
        ({"size": -1}, "size must be a positive integer, got -1"),
        ({"val_per_class": 0}, "val_per_class must be a positive integer, got 0"),
        ({"n_per_class": 2.5}, "n_per_class must be a positive integer, got 2.5"),
        ({"classes": ("circle",)}, "at least two different shapes"),
        ({"classes": ("circle", "circle")}, "at least two different shapes"),
    ],
)
def test_make_shapes_refuses_counts_that_would_write_empty_folders(tmp_path, kwargs, message):
    with pytest.raises(DataError, match=message):
        make_shapes(tmp_path / "d", **kwargs)
    assert not (tmp_path / "d").exists()


# -- --debug, --help ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [["--debug", "inspect", "{missing}"], ["inspect", "{missing}", "--debug"]],
    ids=["before", "after"],
)
def test_debug_before_or_after_the_command_shows_the_traceback(tmp_path, argv):
    missing = str(tmp_path / "missing.onnx")
    proc = subprocess.run(
        [sys.executable, "-m", "finetune", *[a.format(missing=missing) for a in argv]],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr and "OnnxImportError" in proc.stderr
    assert "missing.onnx" in proc.stderr


def test_without_debug_the_same_error_is_one_line(tmp_path, capsys):
    assert main(["inspect", str(tmp_path / "missing.onnx")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing.onnx" in err[0]


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def test_every_option_of_every_command_has_a_sentence_of_help():
    parser = build_parser()
    commands = _subparsers(parser)
    assert set(commands) == {"train", "predict", "inspect", "export", "download", "demo-data"}
    for name, sub in commands.items():
        for action in sub._actions:
            assert action.help and action.help != argparse.SUPPRESS, (name, action.dest)
            if action.dest != "help":  # argparse's own
                assert action.help[0].isupper() and action.help.endswith("."), action.help
    assert "`" not in parser.description and "`" not in parser.format_help()


def test_help_shows_the_defaults(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["demo-data", "--help"])
    assert exit_info.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "(default: 60)" in out and "(default: 64)" in out and "(default: 0)" in out
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "(default: 0.01)" in out and "(default: 32)" in out and "(default: resnet18)" in out
    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "(default: 5, or every class of a model with fewer)" in out
    assert "(default: None)" not in out and "(default: False)" not in out


# -- data sets: two classes, symlinks --------------------------------------------------------


@pytest.fixture
def shapes(tmp_path):
    make_shapes(tmp_path / "shapes", n_per_class=3, size=16, seed=0, classes=("circle", "star"))
    return tmp_path / "shapes" / "train"


def test_a_one_class_data_set_is_refused_by_the_command_in_one_line(shapes, tmp_path):
    (shapes / "star").rename(tmp_path / "elsewhere")
    proc = subprocess.run(
        [sys.executable, "-m", "finetune", "train", "--data", str(shapes)]
        + ["--out", str(tmp_path / "run"), "--image-size", "16", "--quiet"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert f"dataset folder {shapes} has 1 class sub-folder(s) (circle)" in lines[0]
    assert "at least 2" in lines[0]
    assert not (tmp_path / "run" / "model.onnx").exists()


def test_image_folder_itself_accepts_one_class_unless_asked_for_more(shapes, tmp_path):
    (shapes / "star").rename(tmp_path / "elsewhere")
    assert ImageFolder(shapes).classes == ["circle"]  # as torchvision's ImageFolder
    with pytest.raises(DataError, match="needs at least 2"):
        ImageFolder(shapes, min_classes=2)


def test_a_symlink_loop_inside_a_class_is_refused_naming_the_link(shapes):
    os.symlink("..", shapes / "circle" / "loop")
    with pytest.raises(DataError) as info:
        ImageFolder(shapes)
    message = str(info.value)
    assert message.startswith(f"symlink loop: {shapes / 'circle' / 'loop'} leads back to")
    assert "remove the link" in message


def test_a_link_to_another_class_is_refused_not_labelled_twice(shapes):
    os.symlink(os.path.join("..", "star"), shapes / "circle" / "stars")
    with pytest.raises(DataError, match="same folder, reached twice"):
        ImageFolder(shapes)


def test_a_linked_image_in_a_second_class_is_refused(shapes):
    os.symlink(shapes / "star" / "star_0000.png", shapes / "circle" / "extra.png")
    with pytest.raises(DataError, match="same file, reached twice"):
        ImageFolder(shapes)


def test_symlinked_class_folders_and_subfolders_are_followed_once(shapes, tmp_path):
    (shapes / "circle").rename(tmp_path / "photos")
    os.symlink(tmp_path / "photos", shapes / "circle")
    (tmp_path / "more").mkdir()
    (shapes / "star" / "star_0000.png").rename(tmp_path / "more" / "star_0000.png")
    os.symlink(tmp_path / "more", shapes / "star" / "more")
    ds = ImageFolder(shapes)
    assert ds.classes == ["circle", "star"]
    assert [os.path.relpath(p, shapes) for p, _ in ds.samples] == [
        "circle/circle_0000.png",
        "circle/circle_0001.png",
        "circle/circle_0002.png",
        "star/star_0001.png",
        "star/star_0002.png",
        "star/more/star_0000.png",
    ]
    assert ds.targets == [0, 0, 0, 1, 1, 1]
