"""OpenMP waiting policy: serving speed idle and beside a busy 2-thread process (a retrain).

loopbot runs torch with ``OMP_WAIT_POLICY=PASSIVE`` (threads sleep between parallel regions). A
bounded spin (``GOMP_SPINCOUNT``) is faster on an idle machine, but the bot retrains in a process of
its own on the same cores. This runs the serving measurement (single stream, 8 at once, 8 at once
over two adapters and the base) in a fresh process per setting, alone and beside a competitor that
multiplies 1024x1024 matrices on 2 threads with PASSIVE waiting (as the training worker does).
Run: ``python bench/omp_wait.py [--models DIR]``; writes bench/results/omp_wait.json (~7 min).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from _common import machine, models_dir, write

SETTINGS = {"passive": {"OMP_WAIT_POLICY": "PASSIVE"}, "spin_10000": {"GOMP_SPINCOUNT": "10000"}}

COMPETITOR = """
import time, torch
torch.set_num_threads(2)
a = torch.randn(1024, 1024)
while True:
    a = torch.tanh(a @ a * 0.001)
"""

MEASURE = """
import json, sys, tempfile
from pathlib import Path
sys.path.insert(0, {bench!r})
import serving as S
from adapters.model import default_model_dir, plain_model_dir
from adapters.serving import ModelRuntime
models = Path({models!r})
out = {{}}
with ModelRuntime.load(default_model_dir(models), device="cpu", threads=2, max_batch=16) as rt:
    S.ignore_eos(rt)
    out["single"] = S.single_stream(rt, {{"short_question": S.SHORT}}, 64)["short_question"]
    out["eight_at_once"] = S.concurrent(rt, 8, 64)
    with tempfile.TemporaryDirectory() as tmp:
        for i in (1, 2):
            rt.load_adapter(f"bench-{{i}}", S.random_adapter(plain_model_dir(models), Path(tmp) / str(i), i))
        out["eight_two_adapters"] = S.concurrent(rt, 8, 64, adapters=["bench-1", "bench-2", None])
print("RESULT " + json.dumps(out))
"""


def run(setting: dict[str, str], models: Path, busy: bool, measure: str = MEASURE) -> dict:
    """``measure`` (a script printing ``RESULT <json>``) in a fresh process with ``setting`` in its
    environment, alone or (``busy``) beside the competitor."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    competitor = None
    if busy:
        competitor = subprocess.Popen(
            [sys.executable, "-c", COMPETITOR], env={**env, "OMP_WAIT_POLICY": "PASSIVE"}
        )
        time.sleep(3)
    try:
        script = measure.format(bench=str(Path(__file__).parent), models=str(models))
        done = subprocess.run(
            [sys.executable, "-c", script], env={**env, **setting}, capture_output=True, text=True, check=True
        )
    finally:
        if competitor is not None:
            competitor.kill()
            competitor.wait()
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
    result = json.loads(line[len("RESULT ") :])
    result["load_average"] = os.getloadavg()
    return result


def main() -> None:
    models = models_dir()
    results = {}
    for name, setting in SETTINGS.items():
        for busy in (False, True):
            key = f"{name}_{'beside_training' if busy else 'idle'}"
            results[key] = run(setting, models, busy)
            print(key, results[key], flush=True)
    write("omp_wait", {"machine": machine(), "settings": SETTINGS, **results})


if __name__ == "__main__":
    main()
