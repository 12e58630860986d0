"""The native decode kernels (``adapters/serving/csrc/decode.cpp``), compiled on this machine on first use.

A decode step written out in Python still pays ~1.5-2 us of dispatch for each of ~85 small torch ops a
decoder layer (half of a one-row step); the native layer does the same arithmetic in one call
(README "Serving", ``bench/decode_overhead.py``). It is built with this machine's instruction set
(``-march=native``) into ``$XDG_CACHE_HOME/loopbot/native`` (``~/.cache`` by default) under a name
that changes with the source, torch's version and the CPU's flags, so a changed machine rebuilds:
about 20 s on 2 cores, once (``loopbot model prepare`` does it). Without a C++ compiler the runtime
serves the Python decode step and says so in ``info()``; ``LOOPBOT_MODEL_NATIVE_DECODE=false`` turns
it off.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import platform
from pathlib import Path

log = logging.getLogger(__name__)

SOURCE = Path(__file__).parent / "csrc" / "decode.cpp"
FLAGS = ["-O3", "-march=native", "-fno-trapping-math"]  # the last lets float->int loops vectorise


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return platform.processor()


def build_dir() -> Path:
    """Where the compiled library lives: ``$XDG_CACHE_HOME/loopbot/native/<source+torch+cpu hash>``."""
    import torch

    digest = hashlib.sha256()
    for part in (
        *(path.read_bytes() for path in sorted(SOURCE.parent.iterdir())),
        torch.__version__.encode(),
        _cpu_flags().encode(),
        " ".join(FLAGS).encode(),
    ):
        digest.update(part)
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "loopbot" / "native" / digest.hexdigest()[:16]


@functools.cache
def load() -> str | None:
    """Build (once per machine) and load the kernels into ``torch.ops.loopbot``; None when they are
    available, else why not (no compiler, a build error: the log has the compiler's output)."""
    import torch

    if hasattr(torch.ops, "loopbot") and hasattr(torch.ops.loopbot, "decode"):
        return None
    try:
        from torch.utils.cpp_extension import load as build

        directory = build_dir()
        directory.mkdir(parents=True, exist_ok=True)
        if not (directory / "loopbot_decode.so").exists():
            log.info("building the native decode kernels in %s (about 20 s, once)", directory)
        build(
            name="loopbot_decode",
            sources=[str(SOURCE)],
            extra_cflags=FLAGS,
            build_directory=str(directory),
            is_python_module=False,
            verbose=False,
        )
        torch.ops.loopbot.decode  # noqa: B018  # registered by the library's static initialiser
    except Exception as error:  # no compiler, no ninja, a compile error: serve the Python step
        log.warning(
            "native decode kernels unavailable: serving the Python decode step, ~1.5x slower. Install a "
            "C++ compiler (g++) to build them. The build said: %s",
            error,
        )
        return f"build failed: {type(error).__name__}"
    return None
