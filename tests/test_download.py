"""Pretrained downloads against a local HTTP server on 127.0.0.1: never the network.

Each scenario a user can meet: success, a truncated transfer, a wrong file, a 500 then success,
a dead first mirror, offline mode, a cache hit that makes no request, and ``pretrained=True``
end to end.
"""

from __future__ import annotations

import dataclasses
import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from test_models_onnx import build, random_resnet18

import finetune as ft
from finetune.errors import DownloadError
from finetune.models import cache as dl
from finetune.models import registry

PAYLOAD = np.random.default_rng(0).bytes(300_000)
SHA = hashlib.sha256(PAYLOAD).hexdigest()


class _Handler(BaseHTTPRequestHandler):
    """Serves ``server.files`` by path; ``/flaky`` answers 500 first, ``/truncated`` stops short."""

    def do_GET(self) -> None:
        server = self.server
        server.requests.append(self.path)
        route, _, name = self.path.lstrip("/").partition("/")
        body = server.files.get(name)
        if body is None or route == "missing":
            self.send_error(404)
        elif route == "broken" or route == "flaky" and server.requests.count(self.path) == 1:
            self.send_error(500)
        else:
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2] if route == "truncated" else body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.files = {"model.onnx": PAYLOAD, "other.onnx": PAYLOAD[::-1]}
    httpd.requests = []
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(autouse=True)
def environment(monkeypatch, tmp_path):
    monkeypatch.delenv("FINETUNE_OFFLINE", raising=False)
    monkeypatch.delenv("FINETUNE_MODEL_URL", raising=False)
    monkeypatch.setenv("FINETUNE_HOME", str(tmp_path / "cache"))


def fetch(urls, dest):
    return dl.fetch(urls, dest, SHA, len(PAYLOAD), progress=False, retries=2, backoff=0.01)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_success_streams_into_place(server, tmp_path):
    path = fetch([f"{server.url}/ok/model.onnx"], tmp_path / "m" / "model.onnx")
    assert path.read_bytes() == PAYLOAD
    assert _leftovers(tmp_path / "m") == ["model.onnx"]


def test_progress_bar_names_the_file(server, tmp_path, capsys):
    dl.fetch([f"{server.url}/ok/model.onnx"], tmp_path / "model.onnx", SHA, len(PAYLOAD))
    assert "model.onnx" in capsys.readouterr().err


def test_truncated_transfer_is_retried_then_refused(server, tmp_path):
    with pytest.raises(DownloadError, match=r"(?s)truncated transfer.*after 2 attempts"):
        fetch([f"{server.url}/truncated/model.onnx"], tmp_path / "model.onnx")
    assert server.requests.count("/truncated/model.onnx") == 2
    assert _leftovers(tmp_path) == []


def test_wrong_checksum_names_both_hashes_and_leaves_nothing(server, tmp_path):
    with pytest.raises(DownloadError) as error:
        fetch([f"{server.url}/ok/other.onnx"], tmp_path / "model.onnx")
    assert SHA in str(error.value)
    assert hashlib.sha256(PAYLOAD[::-1]).hexdigest() in str(error.value)
    assert _leftovers(tmp_path) == []


def test_a_500_is_retried(server, tmp_path):
    path = fetch([f"{server.url}/flaky/model.onnx"], tmp_path / "model.onnx")
    assert path.read_bytes() == PAYLOAD
    assert server.requests == ["/flaky/model.onnx"] * 2


def test_a_failing_first_url_falls_through_to_the_second(server, tmp_path):
    urls = [f"{server.url}/missing/model.onnx", f"{server.url}/ok/model.onnx"]
    assert fetch(urls, tmp_path / "model.onnx").read_bytes() == PAYLOAD
    assert server.requests == ["/missing/model.onnx", "/ok/model.onnx"]  # a 404 is not retried


def test_every_url_failing_says_what_each_did_and_where_to_put_the_file(server, tmp_path):
    urls = [f"{server.url}/broken/model.onnx", "http://127.0.0.1:9/model.onnx"]
    with pytest.raises(DownloadError) as error:
        fetch(urls, tmp_path / "model.onnx")
    message = str(error.value)
    assert "HTTP 500 (after 2 attempts)" in message and "ConnectionError" in message
    assert f"save it as {tmp_path / 'model.onnx'}" in message and SHA in message
    assert _leftovers(tmp_path) == []


def test_offline_mode_makes_no_request_and_says_where_to_put_the_file(
    server, tmp_path, monkeypatch
):
    monkeypatch.setenv("FINETUNE_OFFLINE", "1")
    with pytest.raises(DownloadError, match="FINETUNE_OFFLINE") as error:
        fetch([f"{server.url}/ok/model.onnx"], tmp_path / "model.onnx")
    assert str(tmp_path / "model.onnx") in str(error.value)
    assert f"{server.url}/ok/model.onnx" in str(error.value)
    assert server.requests == []


def test_a_cached_file_is_used_without_a_request_even_offline(server, tmp_path, monkeypatch):
    dest = tmp_path / "model.onnx"
    dest.write_bytes(PAYLOAD)
    monkeypatch.setenv("FINETUNE_OFFLINE", "1")
    assert fetch([f"{server.url}/ok/model.onnx"], dest) == dest
    assert server.requests == []


def test_a_corrupt_cached_file_is_replaced(server, tmp_path):
    dest = tmp_path / "model.onnx"
    dest.write_bytes(PAYLOAD[:-1] + b"x")  # right size, wrong bytes
    assert fetch([f"{server.url}/ok/model.onnx"], dest).read_bytes() == PAYLOAD
    assert server.requests == ["/ok/model.onnx"]


def test_the_hash_is_memoised_by_mtime_and_size(tmp_path, monkeypatch):
    path = tmp_path / "model.onnx"
    path.write_bytes(PAYLOAD)
    assert dl.is_valid(path, SHA, len(PAYLOAD))
    calls, real = [], hashlib.sha256
    monkeypatch.setattr(dl.hashlib, "sha256", lambda: calls.append(1) or real())
    assert dl.is_valid(path, SHA, len(PAYLOAD)) and calls == []
    path.write_bytes(PAYLOAD[::-1])
    assert not dl.is_valid(path, SHA, len(PAYLOAD)) and calls == [1]
    assert not dl.is_valid(path, SHA, len(PAYLOAD) + 1) and calls == [1]  # size decides first


def test_cache_dir_is_finetune_home_or_the_user_cache(monkeypatch, tmp_path):
    assert dl.cache_dir() == tmp_path / "cache"
    monkeypatch.delenv("FINETUNE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert dl.cache_dir() == tmp_path / ".cache" / "finetune"


# -- the registry and pretrained=True -------------------------------------------------------------


def test_registry_holds_the_zoo_facts_with_hugging_face_first():
    entry = registry.pretrained("resnet18")
    assert entry.file == "resnet18-v1-7.onnx" and entry.bytes == 46_820_737
    assert entry.sha256 == "4e8f8653e7a2222b3904cc3fe8e304cd8b339ce1d05fd24688162f86fb6df52c"
    assert entry.urls[0].startswith("https://huggingface.co/onnxmodelzoo/")
    assert entry.urls[1].startswith("https://github.com/onnx/models/raw/main/")
    assert (entry.input_name, entry.output_name) == ("data", "resnetv15_dense0_fwd")
    assert entry.features == "resnetv15_pool1_fwd"
    assert entry.preprocessing["mean"] == [0.485, 0.456, 0.406] and entry.top1 == 69.93
    with pytest.raises(DownloadError, match="known: resnet18"):
        registry.pretrained("resnet19")


def test_imagenet_classes_ship_with_the_package():
    classes = ft.models.imagenet_classes()
    assert len(classes) == 1000
    assert classes[0] == "tench, Tinca tinca" and classes[-1].startswith("toilet tissue")
    classes.clear()
    assert len(ft.models.imagenet_classes()) == 1000


@pytest.fixture
def served_resnet18(server, tmp_path_factory, monkeypatch):
    """The registry's resnet18 entry pointed at a small ResNet-18 file on the local server."""
    path = build(tmp_path_factory.mktemp("served") / "r.onnx", random_resnet18(1, 5), "bn", 13, 7)
    server.files["resnet18-v1-7.onnx"] = data = path.read_bytes()
    entry = dataclasses.replace(
        registry.pretrained("resnet18"),
        sha256=hashlib.sha256(data).hexdigest(),
        bytes=len(data),
        urls=("http://127.0.0.1:9/dead", f"{server.url}/ok/resnet18-v1-7.onnx"),
    )
    monkeypatch.setitem(registry.PRETRAINED, "resnet18", entry)
    monkeypatch.setattr(dl, "BACKOFF", 0.01)
    return entry


def test_pretrained_downloads_once_into_finetune_home_and_imports(
    server, served_resnet18, tmp_path
):
    model = ft.models.resnet18(pretrained=True, progress=False)
    assert model.fc.out_features == 5 and not any(p.requires_grad for p in model.parameters())
    assert (tmp_path / "cache" / "resnet18-v1-7.onnx").is_file()
    ft.models.resnet18(weights="DEFAULT", progress=False)  # torchvision's spelling
    assert server.requests == ["/ok/resnet18-v1-7.onnx"]


def test_url_argument_and_environment_override_the_mirrors(
    server, served_resnet18, tmp_path, monkeypatch
):
    monkeypatch.setitem(
        registry.PRETRAINED, "resnet18", dataclasses.replace(served_resnet18, urls=("http://x",))
    )
    path = ft.models.download("resnet18", dest=tmp_path / "a", progress=False,
                              url=f"{server.url}/flaky/resnet18-v1-7.onnx")  # fmt: skip
    assert path == tmp_path / "a" / "resnet18-v1-7.onnx"
    monkeypatch.setenv("FINETUNE_MODEL_URL", f"{server.url}/ok/resnet18-v1-7.onnx")
    assert ft.models.download("resnet18", dest=tmp_path / "b", progress=False).is_file()
    assert server.requests[-1] == "/ok/resnet18-v1-7.onnx"


def test_the_cli_download_command_prints_the_path(server, served_resnet18, tmp_path, capsys):
    from finetune.cli import main

    assert main(["download", "resnet18", "--dest", str(tmp_path / "models"), "--quiet"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "models" / "resnet18-v1-7.onnx")
    assert (tmp_path / "models" / "resnet18-v1-7.onnx").is_file()


def test_an_unwritable_destination_is_a_download_error(server, tmp_path):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(DownloadError, match="cannot write .*FINETUNE_HOME"):
        fetch([f"{server.url}/ok/model.onnx"], tmp_path / "file" / "model.onnx")
    assert server.requests == []
