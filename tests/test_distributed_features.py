"""Sharded feature extraction on Ray actors: the same features and the same head as one process,
with any number of actors, through a killed actor, and clear errors for bad input."""

import os
import socket
import sys
import time

import numpy as np
import pytest

ray = pytest.importorskip("ray")

import finetune as torch  # noqa: E402
from finetune import optim  # noqa: E402
from finetune.data import DataLoader, ImageFolder, load_image  # noqa: E402
from finetune.data.demo import make_shapes  # noqa: E402
from finetune.distributed import ClusterError, RayExtractor, connect  # noqa: E402
from finetune.errors import DataError, FinetuneError  # noqa: E402
from finetune.train import compute_features, fit  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from test_feature_cache import eval_transform, frozen_net  # noqa: E402


class DieOnce:
    """An image loader whose process dies (as if killed) the first time it reads ``victim``."""

    def __init__(self, victim: str, marker: str) -> None:
        self.victim, self.marker = victim, marker

    def __call__(self, path):
        if path == self.victim and not os.path.exists(self.marker):
            open(self.marker, "w").close()
            os._exit(1)
        return load_image(path)


@pytest.fixture(scope="module", autouse=True)
def ray_session():
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(
        address="local",  # a new instance, even if `ray start` left one on this machine
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        logging_level="ERROR",
    )
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return make_shapes(tmp_path_factory.mktemp("shapes"), n_per_class=6, size=32, seed=1)


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("FINETUNE_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def loader(root, image_loader=load_image, on_error="raise"):
    data = ImageFolder(root, eval_transform(32), loader=image_loader, on_error=on_error)
    return DataLoader(data, batch_size=5, shuffle=True, seed=4)


def train(root, cluster, lines=None, **kwargs):
    model = frozen_net()
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    val = DataLoader(ImageFolder(root / "val", eval_transform(32)), batch_size=4)
    history = fit(
        model,
        loader(root / "train", **kwargs),
        opt,
        2,
        val_loader=val,
        cluster=cluster,
        progress=False,
        log=(lines.append if lines is not None else None),
    )
    return model, history


@pytest.mark.parametrize("actors", [1, 2])
def test_sharded_features_equal_local_features(images, actors):
    model = frozen_net()
    local = compute_features(model.eval(), model.fc, loader(images / "train"))
    extract = RayExtractor("local", progress=False, actors=actors)
    sharded = extract(model, model.fc, loader(images / "train"))
    assert len(extract.pool.actors) == actors
    extract.close()
    np.testing.assert_array_equal(sharded[1], local[1])
    np.testing.assert_array_equal(sharded[2], local[2])
    assert sharded[0].dtype == np.float32
    np.testing.assert_allclose(sharded[0], local[0], rtol=1e-5, atol=1e-6)


def test_head_weights_equal_a_single_process_fit(images, home, monkeypatch):
    lines = []
    remote, remote_history = train(images, "local", lines)
    assert any("Ray actors" in line and "images/s" in line for line in lines)
    monkeypatch.setenv("FINETUNE_HOME", str(home.parent / "other-home"))  # no shared cache
    local, local_history = train(images, None)
    np.testing.assert_allclose(
        remote.fc.weight.detach().numpy(), local.fc.weight.detach().numpy(), rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(
        remote.fc.bias.detach().numpy(), local.fc.bias.detach().numpy(), rtol=1e-5, atol=1e-5
    )
    assert [r["val_acc"] for r in remote_history] == [r["val_acc"] for r in local_history]

    lines.clear()  # the Ray run filled the on-disk cache: a second run skips extraction
    monkeypatch.setenv("FINETUNE_HOME", str(home))
    again, _ = train(images, "local", lines)
    assert not any("Ray actors" in line for line in lines)
    assert any("from cache" in line for line in lines)
    np.testing.assert_array_equal(
        again.fc.weight.detach().numpy(), remote.fc.weight.detach().numpy()
    )


def test_a_killed_actor_is_replaced_and_its_shard_redone(images, tmp_path):
    model = frozen_net()
    reference = compute_features(model.eval(), model.fc, loader(images / "train"))
    victim = ImageFolder(images / "train").samples[13][0]
    dying = DieOnce(victim, str(tmp_path / "died"))
    lines = []
    extract = RayExtractor("local", progress=False, log=lines.append, actors=1)
    features = extract(model, model.fc, loader(images / "train", dying))
    assert (tmp_path / "died").exists()
    assert extract.pool.restarts == 1
    assert any("a Ray worker died during samples" in line for line in lines)
    extract.close()
    np.testing.assert_allclose(features[0], reference[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(features[1], reference[1])


def test_an_image_missing_on_a_worker_names_the_path_and_the_worker(images, tmp_path):
    victim = ImageFolder(images / "train").samples[7][0]
    gone = lambda path: load_image(path.replace(victim, victim + ".missing"))  # noqa: E731
    model = frozen_net()
    extract = RayExtractor("local", progress=False, actors=1)
    with pytest.raises(DataError) as info:
        extract(model, model.fc, loader(images / "train", gone))
    message = str(info.value)
    assert victim in message and "on Ray worker" in message and "pid" in message
    assert extract.pool is None  # its actors were released


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("address", ["127.0.0.1:{port}", "ray://127.0.0.1:{port}"])
def test_an_unreachable_address_is_one_error_naming_it_within_seconds(address):
    from finetune.distributed import check_reachable

    address = address.format(port=_closed_port())
    started = time.perf_counter()
    with pytest.raises(ClusterError, match=f"cannot reach the Ray cluster at {address}") as info:
        check_reachable(address)
    assert time.perf_counter() - started < 5
    assert isinstance(info.value, FinetuneError) and "\n" not in str(info.value)


def test_a_malformed_address_is_refused():
    with pytest.raises(ClusterError, match="not understood"):
        connect("http://example.org")


def _cli(*args, env):
    import subprocess

    return subprocess.run(
        [sys.executable, "-m", "finetune", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=300,
    )


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    from finetune import onnx as fonnx

    path = tmp_path_factory.mktemp("model") / "tiny.onnx"
    fonnx.export(frozen_net().eval(), torch.zeros(1, 3, 32, 32), path)
    return path


def test_cli_train_on_ray_then_from_the_cache_without_ray_noise(images, tiny_onnx, tmp_path):
    env = {"FINETUNE_HOME": str(tmp_path / "home")}
    common = ["--model", str(tiny_onnx), "--data", str(images), "--image-size", "32"]
    first = _cli("train", *common, "--epochs", "1", "--out", str(tmp_path / "a"), "--quiet",
                 "--ray", "--ray-workers", "2", env=env)  # fmt: skip
    assert first.returncode == 0, first.stderr
    assert first.stderr == ""  # no Ray warnings, no worker logs
    assert "computed backbone features of 24 samples on 2 Ray actors" in first.stdout
    assert "images/s" in first.stdout
    assert "epoch=1 train_loss=" in first.stdout

    second = _cli("train", *common, "--epochs", "1", "--out", str(tmp_path / "b"), "--quiet",
                  "--ray", env=env)  # fmt: skip
    assert second.returncode == 0, second.stderr
    assert "read backbone features of 24 samples from cache" in second.stdout
    assert "Ray" not in second.stdout  # extraction skipped: Ray never started


def test_cli_unreachable_address_is_one_line_exit_2_within_seconds(images, tmp_path):
    address = f"127.0.0.1:{_closed_port()}"
    started = time.perf_counter()
    result = _cli("train", "--data", str(images), "--out", str(tmp_path / "run"), "--ray",
                  address, env={})  # fmt: skip
    assert time.perf_counter() - started < 20  # python start-up included; the check is 3 s max
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert f"cannot reach the Ray cluster at {address}" in result.stderr
    assert not (tmp_path / "run").exists()


def _out_of_memory(path):
    raise MemoryError


def test_a_worker_out_of_memory_is_reported_not_retried(images):
    model = frozen_net()
    extract = RayExtractor("local", progress=False, actors=1)
    started = time.perf_counter()
    with pytest.raises(ClusterError, match=r"a Ray worker ran out of memory on samples 0\.\.4"):
        extract(model, model.fc, loader(images / "train", _load_first_then(_out_of_memory)))
    assert time.perf_counter() - started < 60


def _load_first_then(failing):
    """The driver reads one image (the ONNX export's example); every later read fails, on the
    driver or on the workers (the list travels with the pickled function)."""

    def load(path, _seen=[]):  # noqa: B006 (the memory of that first read)
        if not _seen:
            _seen.append(path)
            return load_image(path)
        return failing(path)

    return load


@pytest.mark.parametrize(
    "address, target",
    [
        ("head:6379", ("head", 6379)),
        ("head", ("head", 6379)),
        ("ray://head", ("head", 10001)),
        ("ray://head:1234", ("head", 1234)),
        ("[::1]:6379", ("::1", 6379)),
        ("local", None),
        ("auto", None),
    ],
)
def test_addresses(address, target):
    from finetune.distributed.cluster import parse_address

    assert parse_address(address) == target
