"""``finetune.allocator``: glibc keeps freed memory for reuse, so a new array of a size just
freed costs no page faults; the user can say no, and a choice of their own is kept."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux")
    or not os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc"),
    reason="glibc's malloc only",
)

# page faults while 40 MB arrays are made, filled and freed five times, after one warm-up
_FAULTS = """
import resource
import numpy as np
{imports}
np.ones(10_000_000, np.float32)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    np.ones(10_000_000, np.float32)
after = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
print(after - before, {kept})
"""


# glibc's default maps each 40 MB array afresh: at least one fault per page of it, whatever the
# page size the kernel hands out (9,766 faults an array with 4 KB pages; numpy asks for 2 MB
# huge pages, 20 an array when the kernel has them all, 57-570 measured here as it had some)
_FRESH_PAGES = 5 * (40 << 20) // (2 << 20)


def _run(imports: str, kept: str, **env) -> tuple[int, str]:
    code = _FAULTS.format(imports=imports, kept=kept)
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    environ.pop("FINETUNE_MALLOC", None)
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**environ, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    faults, flag = out.stdout.split()
    return int(faults), flag


def test_freed_arrays_are_reused_without_page_faults():
    faults, kept = _run("import finetune", "finetune.allocator.freed_memory_kept")
    assert kept == "True"
    plain, _ = _run("", "None")
    assert plain >= _FRESH_PAGES
    assert faults < 50


def test_finetune_malloc_0_leaves_glibc_alone():
    faults, kept = _run(
        "import finetune", "finetune.allocator.freed_memory_kept", FINETUNE_MALLOC="0"
    )
    assert kept == "False"
    assert faults >= _FRESH_PAGES


def test_the_users_own_glibc_setting_is_kept():
    _, kept = _run(
        "import finetune", "finetune.allocator.freed_memory_kept", MALLOC_TRIM_THRESHOLD_="1000000"
    )
    assert kept == "False"
