"""Nothing lost, nothing faked (issue 17, items 2 and 5): divergence stops before anything is
saved, history.json is strict JSON, a run folder is locked and never silently overwritten,
--resume applies or refuses changed options, and the backbone features show progress and stop
cleanly on Ctrl-C. docs/reliability.md lists these cases."""

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import finetune as ft
from finetune import nn, optim
from finetune.cli import main
from finetune.data import DataLoader, TensorDataset
from finetune.errors import CheckpointError, TrainingError
from finetune.recipe import run
from finetune.train import CHECKPOINT_NAME, History, TrainingInterrupted, fit
from finetune.utils.lock import LOCK_NAME, FolderInUse, folder_lock

MODEL = Path(__file__).parent / "data" / "tiny_resnet_bn.onnx"  # takes 64x64 images


@pytest.fixture(autouse=True)
def _own_feature_cache(tmp_path, monkeypatch):
    """Backbone features are cached on disk between runs; each test starts with none."""
    monkeypatch.setenv("FINETUNE_HOME", str(tmp_path / "home"))


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    from finetune.data.demo import make_shapes

    root = tmp_path_factory.mktemp("shapes")
    make_shapes(root, n_per_class=6, size=64, seed=0, classes=("circle", "square", "star"))
    return root


def _argv(data, out, *extra):
    return [
        "train",
        "--model",
        str(MODEL),
        "--data",
        str(data),
        "--out",
        str(out),
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--workers",
        "0",
        "--quiet",
        *extra,
    ]


def _cli(*argv, env=None, **kwargs):
    return subprocess.run(
        [sys.executable, "-m", "finetune", *map(str, argv)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        **kwargs,
    )


def _one_line_error(stderr: str) -> str:
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("finetune: error:"), stderr
    return lines[0]


def _main_error(capsys, argv) -> str:
    """Run the CLI in-process, expecting exit code 2; the one error line."""
    capsys.readouterr()
    assert main(argv) == 2
    return _one_line_error(capsys.readouterr().err)


# -- divergence: stop before saving, keep the last good checkpoint, say what to do --------------


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d((1, 1))
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(self.flatten(self.pool(self.conv(x))))


def _frozen(seed=0):
    ft.manual_seed(seed)
    model = TinyNet()
    for p in model.conv.parameters():
        p.requires_grad = False
    return model


def _data(n=24, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 3, 6, 6)).astype(np.float32)
    y = rng.integers(0, 3, n)
    x[np.arange(n), y, :, :] += 1.5
    return TensorDataset(ft.from_numpy(x), ft.from_numpy(y))


def _fit(model, lr, out=None, data=None, val=None, epochs=1, progress=False, **kwargs):
    opt = optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    return fit(
        model,
        DataLoader(data or _data(), batch_size=5),
        opt,
        epochs,
        val_loader=DataLoader(val, 4) if val is not None else None,
        checkpoint_dir=out,
        progress=progress,
        log=None,
        **kwargs,
    )


def test_a_huge_finite_lr_stops_at_the_next_step_and_saves_nothing(tmp_path):
    model = _frozen()
    with pytest.raises(TrainingError) as info:
        _fit(model, 1e30, tmp_path)
    message = str(info.value)
    assert "diverged" in message and re.search(r"at epoch 1 step [23]\b", message)
    assert "try --lr 1e+29" in message and "Nothing was saved" in message
    assert not (tmp_path / CHECKPOINT_NAME).exists()


def test_a_nan_lr_is_caught_at_the_next_loss_and_saves_nothing(tmp_path):
    model = _frozen()
    with pytest.raises(TrainingError, match=r"the loss became nan at epoch 1 step 2"):
        _fit(model, float("nan"), tmp_path)
    assert not (tmp_path / CHECKPOINT_NAME).exists()


def test_weights_that_blow_up_in_the_last_step_never_reach_the_checkpoint(tmp_path):
    """The loss of a step is computed before its update: an update that breaks the weights in
    an epoch's last step is caught by the weight check before the checkpoint is written."""
    model = _frozen()
    data = _data(n=5)  # one batch: the only step is the last
    with pytest.raises(TrainingError, match=r"(non-finite|norm).* at the end of epoch 1"):
        _fit(model, 1e30, tmp_path, data=data)
    assert not (tmp_path / CHECKPOINT_NAME).exists()


def test_an_exploding_loss_stops_naming_the_step():
    data = _data()
    data.tensors[0]._data[
        22
    ] *= -1e7  # a wild sample in the fifth batch (its logits favour a wrong class)
    with pytest.raises(
        TrainingError, match=r"the loss \S+ is over 1000 times .* at epoch 1 step 5"
    ):
        _fit(_frozen(), 0.01, data=data)


def test_an_exploding_validation_loss_stops_before_the_checkpoint(tmp_path):
    val = _data(8, 1)
    val.tensors[0]._data[0] *= -1e7
    with pytest.raises(TrainingError, match=r"the validation loss \S+ is over .* at epoch 1;"):
        _fit(_frozen(), 0.01, tmp_path, val=val)
    assert not (tmp_path / CHECKPOINT_NAME).exists()


def test_divergence_after_a_good_epoch_keeps_that_checkpoint_byte_for_byte(tmp_path):
    model = _frozen()
    _fit(model, 0.01, tmp_path)
    good = (tmp_path / CHECKPOINT_NAME).read_bytes()
    opt = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def blow_up(_state):
        opt.param_groups[0]["lr"] = 1e30

    with pytest.raises(TrainingError, match="The checkpoint of epoch 1 in .* is kept"):
        fit(
            model,
            DataLoader(_data(), batch_size=5),
            opt,
            3,
            checkpoint_dir=tmp_path,
            resume=True,
            on_resume=blow_up,
            progress=False,
            log=None,
        )
    assert (tmp_path / CHECKPOINT_NAME).read_bytes() == good


def test_cli_lr_1e30_exits_2_in_one_line_and_writes_no_run(shapes, tmp_path):
    out = tmp_path / "run"
    proc = _cli(*_argv(shapes, out, "--lr", "1e30"))
    assert proc.returncode == 2
    line = _one_line_error(proc.stderr)
    assert "diverged" in line and "epoch 1 step" in line and "--lr 1e+29" in line
    assert sorted(p.name for p in out.iterdir()) == []  # no checkpoint, history, model or lock


def test_history_json_is_strict_json_with_non_finite_numbers_as_strings(tmp_path):
    history = History(
        [{"epoch": 1, "train_loss": float("nan"), "val_loss": float("inf"), "val_acc": None}]
    )
    history.to_json(tmp_path / "history.json")
    text = (tmp_path / "history.json").read_text()

    def refuse(constant):
        raise AssertionError(f"bare {constant} in history.json")

    (record,) = json.loads(text, parse_constant=refuse)
    assert record == {"epoch": 1, "train_loss": "NaN", "val_loss": "Infinity", "val_acc": None}
    assert math.isnan(float(record["train_loss"])) and float(record["val_loss"]) == math.inf


# -- --epochs 0 -----------------------------------------------------------------------------------


def test_zero_epochs_are_refused_by_fit_run_and_the_cli(shapes, tmp_path, capsys):
    with pytest.raises(TrainingError, match="epochs must be a whole number of at least 1"):
        _fit(_frozen(), 0.01, epochs=0)
    with pytest.raises(TrainingError, match="--epochs"):
        run(str(MODEL), shapes, tmp_path / "api", epochs=0, progress=False, log=None)
    assert not (tmp_path / "api").exists()
    with pytest.raises(SystemExit) as exit_info:
        main(_argv(shapes, tmp_path / "cli", "--epochs", "0"))
    assert exit_info.value.code == 2
    assert "--epochs" in capsys.readouterr().err
    assert not (tmp_path / "cli").exists()


# -- a folder holding a run is refused; --overwrite replaces it ------------------------------------


def test_a_finished_run_is_refused_then_replaced_with_overwrite(shapes, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_argv(shapes, out)) == 0
    files = {p.name: p.read_bytes() for p in out.iterdir()}
    assert {CHECKPOINT_NAME, "history.json", "model.onnx"} <= set(files)
    assert LOCK_NAME not in files  # released at the end

    line = _main_error(capsys, _argv(shapes, out, "--lr", "0.05"))
    assert f"run folder {out} already holds a finished run" in line
    assert "--resume" in line and "--overwrite" in line
    assert {p.name: p.read_bytes() for p in out.iterdir()} == files  # untouched

    assert main(_argv(shapes, out, "--lr", "0.05", "--overwrite")) == 0
    assert "removed the previous run's" in capsys.readouterr().out
    assert json.loads((out / "history.json").read_text())[0]["lr"] == 0.05
    assert ft.load(out / CHECKPOINT_NAME)["config"]["lr"] == 0.05


def test_an_interrupted_run_is_refused_too(shapes, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_argv(shapes, out)) == 0
    (out / "model.onnx").unlink()
    line = _main_error(capsys, _argv(shapes, out))
    assert "holds an unfinished run (checkpoint.npz, history.json)" in line


def test_resume_and_overwrite_together_are_a_usage_error(shapes, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(_argv(shapes, tmp_path, "--resume", "--overwrite"))
    assert exit_info.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_overwrite_keeps_the_old_run_when_the_new_one_cannot_start(shapes, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_argv(shapes, out)) == 0
    files = {p.name: p.read_bytes() for p in out.iterdir()}
    line = _main_error(capsys, _argv(tmp_path / "no-such-data", out, "--overwrite"))
    assert "does not exist" in line
    assert {p.name: p.read_bytes() for p in out.iterdir()} == files


# -- the checkpoint carries the classes, the preprocessing and the options -------------------------


def test_the_checkpoint_carries_classes_preprocessing_and_options(shapes, tmp_path):
    out = tmp_path / "run"
    assert main(_argv(shapes, out, "--lr", "0.02")) == 0
    state = ft.load(out / CHECKPOINT_NAME)
    assert state["metadata"]["classes"] == ["circle", "square", "star"]
    assert state["metadata"]["input_size"] == 64 and state["metadata"]["resize"] == 73
    np.testing.assert_allclose(state["metadata"]["mean"], [0.485, 0.456, 0.406])
    np.testing.assert_allclose(state["metadata"]["std"], [0.229, 0.224, 0.225])
    config = state["config"]
    assert (config["lr"], config["epochs"], config["batch_size"], config["image_size"]) == (
        0.02,
        1,
        4,
        64,
    )
    assert config["model"] == str(MODEL.resolve()) and len(config["model_sha256"]) == 64
    assert config["data"] == str(shapes.resolve())


# -- --resume with changed options: applied and said, or refused ----------------------------------


def test_resume_applies_more_epochs_and_a_new_lr_and_says_so(shapes, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_argv(shapes, out, "--lr", "0.05")) == 0
    capsys.readouterr()
    assert main(_argv(shapes, out, "--resume", "--epochs", "3", "--lr", "0.02")) == 0
    said = capsys.readouterr().out
    assert "--epochs 1 -> 3" in said and "--lr 0.05 -> 0.02" in said
    assert [r["lr"] for r in json.loads((out / "history.json").read_text())] == [0.05, 0.02, 0.02]
    # options left out keep the run's values, not the defaults (--lr 0.01)
    argv = _argv(shapes, out, "--resume")
    argv[argv.index("--epochs") + 1] = "4"
    assert main(argv) == 0
    assert json.loads((out / "history.json").read_text())[-1]["lr"] == 0.02


def test_resume_applies_a_new_batch_size_at_an_epoch_boundary(shapes, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_argv(shapes, out)) == 0
    argv = _argv(shapes, out, "--resume", "--epochs", "2")
    argv[argv.index("--batch-size") + 1] = "6"
    assert main(argv) == 0
    assert "--batch-size 4 -> 6" in capsys.readouterr().out
    assert ft.load(out / CHECKPOINT_NAME)["config"]["batch_size"] == 6


@pytest.mark.parametrize(
    "change, expected",
    [
        (["--seed", "3"], "--seed (was 0, now 3)"),
        (["--augment"], "--augment (was False, now True)"),
        (["--data", "{other}"], "--data (was "),
        (["--model", "{copy}"], "--model (was "),
    ],
)
def test_resume_refuses_options_that_change_what_the_weights_mean(
    shapes, tmp_path, capsys, change, expected
):
    out = tmp_path / "run"
    assert main(_argv(shapes, out, "--epochs", "2")) == 0
    files = {p.name: p.read_bytes() for p in out.iterdir()}
    other = tmp_path / "other"
    (other / "circle").mkdir(parents=True)  # never read: the change is refused first
    copy = tmp_path / "other.onnx"
    copy.write_bytes(MODEL.read_bytes() + b"\x00")  # other bytes: other weights, for all we know
    change = [c.format(other=other, copy=copy) for c in change]
    line = _main_error(capsys, _argv(shapes, out, "--resume", *change))
    assert expected in line and f"cannot resume {out}" in line
    assert {p.name: p.read_bytes() for p in out.iterdir()} == files


def test_resume_refuses_a_changed_image_size(shapes, tmp_path):
    """Through the API with a model of any input size (the CLI's tiny model fixes 64x64)."""
    out = tmp_path / "run"
    common = dict(batch_size=4, num_workers=0, progress=False, log=None)
    run(_frozen(), shapes, out, epochs=1, image_size=32, **common)
    with pytest.raises(CheckpointError, match=r"--image-size \(was 32, now 48\)"):
        run(_frozen(), shapes, out, epochs=2, image_size=48, resume=True, **common)
    result = run(_frozen(), shapes, out, epochs=2, resume=True, **common)  # keeps 32
    assert [r["epoch"] for r in result.history] == [1, 2]
    assert ft.load(out / CHECKPOINT_NAME)["metadata"]["input_size"] == 32


def test_resume_refuses_fewer_epochs_than_were_trained(shapes, tmp_path, capsys):
    out = tmp_path / "run"
    argv = _argv(shapes, out)
    argv[argv.index("--epochs") + 1] = "3"
    assert main(argv) == 0
    line = _main_error(capsys, _argv(shapes, out, "--resume"))  # --epochs 1
    assert "--epochs 1 (the run has trained 3)" in line


def test_resume_refuses_a_moved_class_list(shapes, tmp_path, capsys):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(shapes, data)
    out = tmp_path / "run"
    assert main(_argv(data, out)) == 0
    for split in ("train", "val"):
        (data / split / "star").rename(data / split / "triangle")
    line = _main_error(capsys, _argv(data, out, "--resume", "--epochs", "2"))
    assert "its classes were ['circle', 'square', 'star']" in line


def test_a_moved_copy_of_the_same_model_file_resumes(shapes, tmp_path):
    import shutil

    copy = tmp_path / "moved.onnx"
    shutil.copy(MODEL, copy)
    out = tmp_path / "run"
    assert main(_argv(shapes, out)) == 0
    argv = _argv(shapes, out, "--resume", "--epochs", "2")
    argv[argv.index("--model") + 1] = str(copy)
    assert main(argv) == 0


# -- the run folder's lock ----------------------------------------------------------------------


def _env(tmp_path):
    return {**os.environ, "PYTHONUNBUFFERED": "1", "FINETUNE_HOME": str(tmp_path / "home")}


def _start_long_run(shapes, out, env):
    argv = _argv(shapes, out)
    argv[argv.index("--epochs") + 1] = "5000"
    proc = subprocess.Popen(
        [sys.executable, "-m", "finetune", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    for line in proc.stdout:
        if line.startswith("epoch=2 "):  # so epoch 1's checkpoint is on disk
            return proc
    proc.kill()
    raise AssertionError(f"the first run never finished an epoch: {proc.stderr.read()}")


def test_a_second_run_into_a_locked_folder_fails_at_once_naming_it(shapes, tmp_path):
    env, out = _env(tmp_path), tmp_path / "run"
    first = _start_long_run(shapes, out, env)
    try:
        owner = json.loads((out / LOCK_NAME).read_text())
        assert owner["pid"] == first.pid
        for extra in ([], ["--resume"], ["--overwrite"]):
            started = time.perf_counter()
            second = _cli(*_argv(shapes, out, *extra), env=env)
            assert second.returncode == 2
            line = _one_line_error(second.stderr)
            assert f"run folder {out} is in use by another finetune run (pid {first.pid}" in line
            assert "data:" not in second.stdout  # refused before reading the data
            assert time.perf_counter() - started < 30  # seconds of Python start-up at most
    finally:
        first.send_signal(signal.SIGINT)
        _, stderr = first.communicate(timeout=120)
    assert first.returncode == 130, stderr
    assert not (out / LOCK_NAME).exists() and not (out / "model.onnx").exists()


def test_a_lock_left_by_a_killed_run_is_taken_over_and_the_run_resumes(shapes, tmp_path):
    env, out = _env(tmp_path), tmp_path / "run"
    killed = _start_long_run(shapes, out, env)
    killed.kill()  # SIGKILL: no chance to clean up
    killed.communicate(timeout=60)
    assert json.loads((out / LOCK_NAME).read_text())["pid"] == killed.pid
    state = ft.load(out / CHECKPOINT_NAME)
    argv = _argv(shapes, out, "--resume")
    argv[argv.index("--epochs") + 1] = str(state["epoch"] + 1)  # not all 5000 of them
    proc = _cli(*argv, env=env)
    assert proc.returncode == 0, proc.stderr
    assert f"left by a run that is no longer running (pid {killed.pid}" in proc.stdout
    assert not (out / LOCK_NAME).exists() and (out / "model.onnx").exists()


def test_the_lock_is_reentrant_in_a_thread_and_exclusive_across_processes(tmp_path):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from finetune.utils.lock import folder_lock\n"
            "with folder_lock(sys.argv[1]):\n"
            "    print('locked', flush=True)\n"
            "    time.sleep(60)\n",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(FolderInUse, match=f"pid {holder.pid}"):
            with folder_lock(tmp_path):
                pass
    finally:
        holder.kill()
        holder.communicate(timeout=60)
    messages = []
    with folder_lock(tmp_path, log=messages.append):
        with folder_lock(tmp_path):  # fit inside run: the same thread takes it again
            assert (tmp_path / LOCK_NAME).exists()
        assert (tmp_path / LOCK_NAME).exists()
    assert not (tmp_path / LOCK_NAME).exists()
    assert len(messages) == 1 and f"pid {holder.pid}" in messages[0]


# -- the backbone features: a progress bar in images/s, a clean Ctrl-C ----------------------------


def test_feature_computation_shows_a_bar_in_images_per_second(capsys):
    model = _frozen()
    _fit(model, 0.01, cache_features=True, progress=True)
    err = capsys.readouterr().err
    assert "backbone features" in err and "img/s" in err


def test_ctrl_c_during_feature_computation_stops_and_writes_nothing(tmp_path):
    model = _frozen()
    calls = {"n": 0}
    original = model.conv.forward

    def forward_then_interrupt(x):
        calls["n"] += 1
        if calls["n"] == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return original(x)

    model.conv.forward = forward_then_interrupt
    handler = signal.getsignal(signal.SIGINT)
    out = tmp_path / "run"
    with pytest.raises(TrainingInterrupted, match=r"computing backbone features \(10 of 24 images"):
        _fit(model, 0.01, out, cache_features=True)
    assert signal.getsignal(signal.SIGINT) is handler
    assert sorted(p.name for p in out.iterdir()) == []


def test_cli_ctrl_c_during_feature_computation_is_one_line_and_exit_130(tmp_path):
    from finetune.data.demo import make_shapes

    data = make_shapes(tmp_path / "data", n_per_class=40, size=64, seed=0)
    out, env = tmp_path / "run", _env(tmp_path)
    argv = _argv(data, out)
    argv.remove("--quiet")  # the bar shows on stderr, so we know when extraction runs
    proc = subprocess.Popen(
        [sys.executable, "-m", "finetune", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    seen = b""
    while b"backbone features" not in seen:
        chunk = os.read(proc.stderr.fileno(), 4096)
        assert chunk, seen
        seen += chunk
    proc.send_signal(signal.SIGINT)
    _, rest = proc.communicate(timeout=120)
    assert proc.returncode == 130
    text = (seen + rest).decode()
    pieces = [p.strip() for p in text.replace("\r", "\n").splitlines() if p.strip()]
    errors = [p for p in pieces if p.startswith("finetune:")]
    assert len(errors) == 1 and "Traceback" not in text, text
    assert errors[0].startswith("finetune: error: interrupted while computing backbone features")
    assert pieces[-1] == errors[0]
    assert sorted(p.name for p in out.iterdir()) == []  # no checkpoint, no model, no lock
    features = tmp_path / "home" / "features"
    assert not features.exists() or not any(features.iterdir())  # no half-written cache entry
