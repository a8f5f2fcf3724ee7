"""Test-session settings: the library's cache folder (``FINETUNE_HOME``: downloaded models, the
backbone feature cache) is a fresh temporary folder, so the suite never reads or fills the
user's ``~/.cache/finetune``; subprocesses the tests start inherit it."""

import os
import shutil
import tempfile

_HOME = tempfile.mkdtemp(prefix="finetune-home-")


def pytest_configure(config):
    os.environ["FINETUNE_HOME"] = _HOME


def pytest_unconfigure(config):
    shutil.rmtree(_HOME, ignore_errors=True)
