"""A newcomer's first run: fresh clone → ``make install`` → ``loopbot model prepare`` → ``loopbot demo``.

Times each phase (install, prepare, first answer, retrain, total) and samples the resident memory of
the whole process tree (the CLI and its training child) every 0.2 s, so a peak is the sum of every
process alive at that moment: summed RSS, and summed PSS (shared pages counted once; see ``pss_mb``).
The first answer is the first ``A:`` line the demo prints.

Run: ``python bench/first_run.py [--runs N] [--no-clone]``. With ``--no-clone`` the current checkout's
venv is used and install is not timed. Each run uses fresh data and model directories.
Writes bench/results/first_run.json.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from _common import machine, write

ROOT = Path(__file__).resolve().parent.parent


def pss_mb(pid: int) -> float:
    """Proportional set size: a page shared by n processes counts 1/n in each (Linux smaps_rollup).

    Summed over a process tree it is the memory the tree needs; summed RSS counts twice the library
    and model-file pages that the CLI and its training process share (libtorch, the CUDA libraries
    torch's wheel maps, triton, the mapped safetensors): 0.9-1.0 GB more at the demo's peak here.
    """
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1e3
    except OSError:
        pass
    return 0.0


class TreeMemory:
    """Peak summed RSS and summed PSS of a process and its descendants, sampled in a thread."""

    def __init__(self, pid: int, every: float = 0.2) -> None:
        import psutil

        self.root = psutil.Process(pid)
        self.peak_mb = 0.0
        self.peak_pss_mb = 0.0
        self.at_peak: dict[str, float] = {}
        self.by_process: dict[str, float] = {}
        self._stop = threading.Event()
        self._every = every
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            try:
                procs = [self.root, *self.root.children(recursive=True)]
                total = total_pss = 0.0
                now: dict[str, float] = {}
                for p in procs:
                    try:
                        rss = p.memory_info().rss / 1e6
                        name = " ".join(p.cmdline()[1:3])[-60:]
                    except psutil.Error:
                        continue
                    total += rss
                    total_pss += pss_mb(p.pid)
                    now[name] = now.get(name, 0.0) + rss
                    self.by_process[name] = max(self.by_process.get(name, 0.0), rss)
                if total > self.peak_mb:
                    self.peak_mb, self.at_peak = total, now
                self.peak_pss_mb = max(self.peak_pss_mb, total_pss)
            except psutil.Error:
                pass
            self._stop.wait(self._every)

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        self._thread.join()
        top = sorted(self.by_process.items(), key=lambda kv: -kv[1])[:4]
        return {
            "peak_mb": round(self.peak_mb),
            "peak_pss_mb": round(self.peak_pss_mb),
            "at_peak": {k: round(v) for k, v in sorted(self.at_peak.items(), key=lambda kv: -kv[1])},
            "largest": {k: round(v) for k, v in top},
        }


def run(cmd: list[str], cwd: Path, env: dict[str, str], marks: dict[str, str]) -> dict[str, Any]:
    """Run ``cmd``; record when each line matching a mark first appears (seconds from start)."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    )
    memory = TreeMemory(proc.pid)
    seen: dict[str, float] = {}
    tail: list[str] = []
    said: list[str] = []  # what a newcomer reads: the questions and answers the demo prints
    assert proc.stdout is not None
    for line in proc.stdout:
        tail = (tail + [line.rstrip()])[-30:]
        if line.lstrip().startswith(("Q:", "A:", "before:", "after:", "trained ", "taught ", "regression ")):
            said.append(line.strip())
        for name, prefix in marks.items():
            if name not in seen and line.lstrip().startswith(prefix):
                seen[name] = round(time.perf_counter() - started, 1)
    rc = proc.wait()
    result = {"seconds": round(time.perf_counter() - started, 1), "marks": seen, **memory.stop()}
    if said:
        result["transcript"] = said
    if rc != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({rc}):\n" + "\n".join(tail))
    return result


def one_run(clone: bool) -> dict[str, Any]:
    scratch = Path(tempfile.mkdtemp(prefix="first-run-"))
    try:
        env = {**os.environ, "LOOPBOT_DATA_DIR": str(scratch / "data")}
        row: dict[str, Any] = {}
        if clone:
            checkout = scratch / "loopbot"
            subprocess.run(["git", "clone", "-q", str(ROOT), str(checkout)], check=True)
            env.pop("VIRTUAL_ENV", None)
            # A newcomer has no torch.compile cache either (torch's default is shared per user in /tmp).
            env["TORCHINDUCTOR_CACHE_DIR"] = str(scratch / "torchinductor")
            # nor the native decode kernels (prepare compiles them into $XDG_CACHE_HOME/loopbot/native)
            env["XDG_CACHE_HOME"] = str(scratch / "cache")
            row["install"] = run(["make", "install"], checkout, env, {})
        else:
            checkout = ROOT
        loopbot = str(checkout / ".venv" / "bin" / "loopbot")
        row["prepare"] = run([loopbot, "model", "prepare"], checkout, env, {})
        demo = run(
            [loopbot, "demo", "--json", str(scratch / "demo.json")],
            checkout,
            env,
            {"first_answer": "A:", "retrain_start": "4. retraining", "answer_again": "5. answering again"},
        )
        row["demo"] = demo
        result = json.loads((scratch / "demo.json").read_text(encoding="utf-8"))
        marks = demo["marks"]
        row["summary"] = {
            "install_s": row.get("install", {}).get("seconds"),
            "prepare_s": row["prepare"]["seconds"],
            "first_answer_after_install_s": round(row["prepare"]["seconds"] + marks["first_answer"], 1),
            "retrain_s": result["timings"].get("train_gate_swap"),
            "demo_after_install_s": round(row["prepare"]["seconds"] + demo["seconds"], 1),
            "peak_mb": {"prepare": row["prepare"]["peak_mb"], "demo": demo["peak_mb"]},
            "peak_pss_mb": {"prepare": row["prepare"]["peak_pss_mb"], "demo": demo["peak_pss_mb"]},
            "promoted": result["promoted"],
            "gate": result["gate"],
        }
        return row
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def main() -> None:
    args = sys.argv[1:]
    runs = int(args[args.index("--runs") + 1]) if "--runs" in args else 1
    clone = "--no-clone" not in args
    rows = []
    for _ in range(runs):
        load = os.getloadavg()
        row = one_run(clone)
        row["load_average_before"] = [round(x, 2) for x in load]
        print(json.dumps(row["summary"]), flush=True)
        rows.append(row)
    write("first_run", {"machine": machine(), "runs": rows})


if __name__ == "__main__":
    main()
