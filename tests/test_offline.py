"""Offline and download progress: a host name that does not resolve is known at once, never retried,
and said in one line that tells the user how to supply the file; downloads show bytes.

``.invalid`` never resolves (RFC 6761), so these tests need no network and fail fast offline too.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from finetune.errors import DownloadError
from finetune.models import cache as dl

PAYLOAD = np.random.default_rng(1).bytes(200_000)
SHA = hashlib.sha256(PAYLOAD).hexdigest()
NOWHERE = "http://nonexistent.invalid/resnet18-v1-7.onnx"
HOW_TO_SUPPLY = ("--model path/to/", "FINETUNE_MODEL_URL", "FINETUNE_OFFLINE=1")
URLLIB3_TEXT = ("urllib3", "HTTPConnectionPool", "Max retries", "NameResolutionError", "object at")


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.server.requests.append(self.path)
        self.send_response(200)
        self.send_header("Content-Length", str(len(PAYLOAD)))
        self.end_headers()
        self.wfile.write(PAYLOAD)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
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


def test_an_unresolvable_host_fails_in_under_a_second_without_retries(tmp_path, monkeypatch):
    attempts = []
    real_get = dl.requests.get
    monkeypatch.setattr(dl.requests, "get", lambda *a, **k: attempts.append(a) or real_get(*a, **k))
    start = time.perf_counter()
    with pytest.raises(DownloadError) as error:  # the defaults: 4 attempts, 1 s backoff
        dl.fetch([NOWHERE], tmp_path / "model.onnx", SHA, len(PAYLOAD), progress=False)
    assert time.perf_counter() - start < 1.0
    assert len(attempts) == 1
    message = str(error.value)
    assert "\n" not in message
    assert "no network (cannot resolve nonexistent.invalid)" in message
    assert all(hint in message for hint in HOW_TO_SUPPLY), message
    assert not any(text in message for text in URLLIB3_TEXT), message
    assert str(tmp_path / "model.onnx") in message and SHA in message
    assert list(tmp_path.iterdir()) == []


def test_a_dead_mirror_with_a_bad_name_falls_through_to_a_good_one(server, tmp_path):
    urls = [NOWHERE, f"{server.url}/model.onnx"]
    path = dl.fetch(urls, tmp_path / "model.onnx", SHA, len(PAYLOAD), progress=False)
    assert path.read_bytes() == PAYLOAD and server.requests == ["/model.onnx"]


def test_a_refused_connection_is_still_retried_and_named_in_one_line(tmp_path):
    with pytest.raises(DownloadError) as error:
        dl.fetch(["http://127.0.0.1:9/m.onnx"], tmp_path / "m.onnx", SHA, retries=3, backoff=0.01)
    message = str(error.value)
    assert "ConnectionError: Connection refused (after 3 attempts)" in message
    assert "\n" not in message and not any(text in message for text in URLLIB3_TEXT)


def test_a_download_shows_its_bytes(server, tmp_path, capsys):
    dl.fetch([f"{server.url}/model.onnx"], tmp_path / "model.onnx", SHA, len(PAYLOAD))
    bar = capsys.readouterr().err
    assert "model.onnx" in bar
    assert "100%" in bar and "195kB/195kB" in bar, bar  # 200,000 bytes in KiB, and a rate in B/s
    assert re.search(r"\d[kM]?B/s\]", bar), bar


def _cli(*args, env=None):
    full_env = {**os.environ, **(env or {})}
    full_env.pop("FINETUNE_OFFLINE", None)
    full_env.update(env or {})
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "finetune", *args], capture_output=True,
                          text=True, env=full_env, timeout=120)  # fmt: skip
    return done, time.perf_counter() - start


@pytest.mark.parametrize(
    "command",
    [["download", "resnet18"], ["export", "--model", "resnet18", "--out", "OUT/m.onnx"]],
    ids=["download", "export"],
)
def test_cli_offline_is_one_line_exit_2_with_how_to_supply_the_file(command, tmp_path):
    command = [part.replace("OUT", str(tmp_path)) for part in command]
    env = {"FINETUNE_HOME": str(tmp_path / "cache"), "FINETUNE_MODEL_URL": NOWHERE}
    done, seconds = _cli(*command, env=env)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("finetune: error: could not download")
    assert "no network (cannot resolve nonexistent.invalid)" in lines[0]
    assert all(hint in lines[0] for hint in HOW_TO_SUPPLY), lines[0]
    assert not any(text in lines[0] for text in URLLIB3_TEXT) and "Traceback" not in done.stderr
    assert seconds < 30  # the interpreter and imports; the retries used to add 7 s per mirror


def test_cli_with_finetune_offline_says_so_and_where_the_file_goes(tmp_path):
    env = {"FINETUNE_HOME": str(tmp_path / "cache"), "FINETUNE_OFFLINE": "1"}
    done, _ = _cli("download", "resnet18", env=env)
    assert done.returncode == 2
    line = done.stderr.strip()
    assert "\n" not in line and "FINETUNE_OFFLINE is set" in line
    assert str(tmp_path / "cache" / "resnet18-v1-7.onnx") in line and "--model path/to/" in line
