"""Cost of `loopbot model prepare`: wall time, peak RSS and size on disk, from an empty models dir.

Run: ``python bench/prepare.py [--models DIR]`` (default: a fresh temp dir, removed afterwards).
Writes bench/results/prepare.json.
"""

from __future__ import annotations

import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

from _common import machine, write


def size_mb(path: Path) -> float:
    return round(sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6, 1)


def main() -> None:
    from adapters.model import default_model_dir, plain_model_dir, prepare_default_model

    keep = "--models" in sys.argv
    models = (
        Path(sys.argv[sys.argv.index("--models") + 1]) if keep else Path(tempfile.mkdtemp(prefix="prepare-"))
    )
    try:
        started = time.perf_counter()
        prepare_default_model(models, progress=False)
        seconds = time.perf_counter() - started
        again = time.perf_counter()
        prepare_default_model(models, progress=False)  # idempotent: must be instant
        data = {
            "machine": machine(),
            "prepare_seconds": round(seconds, 1),
            "rerun_seconds": round(time.perf_counter() - again, 3),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "gptq_size_mb": size_mb(default_model_dir(models)),
            "plain_size_mb": size_mb(plain_model_dir(models)),
            "gguf_size_mb": 98.4,
        }
    finally:
        if not keep:
            shutil.rmtree(models, ignore_errors=True)
    write("prepare", data)


if __name__ == "__main__":
    main()
