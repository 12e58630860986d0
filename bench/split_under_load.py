"""Native decode steps split across two threads, idle and beside a retrain (issue 13).

The native decode step (``adapters/serving/csrc/decode.cpp``) splits a step across two threads that meet at
~150 spinning barriers a step. On an idle machine that is 1.3-1.6x faster than one thread; with a
retrain's threads on the same two cores a descheduled partner holds every barrier up, so the runtime
re-checks its choice by measurement (``adapters.serving._decode.SplitChoice``). This runs the serving
measurement of ``bench/omp_wait.py`` (single stream, 8 at once, 8 over two adapters and the base) in
a fresh process per mode, alone and beside its 2-thread competitor: ``adaptive`` (the runtime's
default), ``always_split`` (never re-checked) and ``one_thread``.
Run: ``python bench/split_under_load.py``; writes bench/results/split_under_load.json (~6 min).
"""

from __future__ import annotations

from _common import machine, models_dir, write
from omp_wait import MEASURE, run

MODES = {
    "adaptive": "",
    "always_split": "rt._engine.decode_step.split.threads = lambda: 2",
    "one_thread": "rt._engine.decode_step.threads = 1",
}


def main() -> None:
    models = models_dir()
    results = {}
    for name, line in MODES.items():
        anchor = "    S.ignore_eos(rt)\n"
        measure = MEASURE.replace(anchor, anchor + (f"    {line}\n" if line else ""))
        for busy in (False, True):
            key = f"{name}_{'beside_training' if busy else 'idle'}"
            results[key] = run({"OMP_WAIT_POLICY": "PASSIVE"}, models, busy, measure)
            print(key, results[key], flush=True)
    write("split_under_load", {"machine": machine(), "modes": MODES, **results})


if __name__ == "__main__":
    main()
