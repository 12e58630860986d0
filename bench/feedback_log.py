"""Benchmark the feedback log: write latency (durable, synchronous=FULL), concurrent throughput,
pair queries, stats, forget and the Alpaca export with a train/eval split.

    python bench/feedback_log.py [--answers N]

Writes ``bench/results/feedback_log.json``. Uses a temp SQLite file on the local disk.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from feedback.dataset import export_alpaca, read_dataset  # noqa: E402
from feedback.log import FeedbackLog  # noqa: E402

CONTEXT = "[1] " + "Mochi sneezed twice a day in March 2024; the vet said it was a mild cold. " * 12


def _answer(log: FeedbackLog, n: int, user: str) -> int:
    return log.record_answer(
        guild_id="g",
        channel_id="c",
        user_id=user,
        question=f"How often does cat {n} sneeze in the morning?",
        context=CONTEXT,
        chunk_ids=[f"post-{n}", f"rec-{n}"],
        prompt="<prompt>" + CONTEXT,
        prompt_version="v1",
        adapter="v1",
        answer=f"Cat {n} sneezes about twice a day [1].",
        message_ids=[f"m{n}"],
    )


def _ms(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50_ms": round(statistics.median(ordered) * 1000, 3),
        "p95_ms": round(ordered[int(0.95 * (len(ordered) - 1))] * 1000, 3),
    }


def _timed(fn) -> tuple[object, float]:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--answers", type=int, default=2000)
    args = parser.parse_args()
    results: dict[str, object] = {"answers": args.answers, "machine": platform.platform()}

    with tempfile.TemporaryDirectory() as tmp:
        log = FeedbackLog(Path(tmp) / "fb.db")

        record, vote, lookup = [], [], []
        for n in range(args.answers):
            answer_id, took = _timed(lambda n=n: _answer(log, n, f"u{n % 50}"))
            record.append(took)
            _, took = _timed(lambda a=answer_id, n=n: log.set_vote(a, "voter", 1 if n % 4 else -1, True))
            vote.append(took)
            _, took = _timed(lambda n=n: log.answer_for_message(f"m{n}"))
            lookup.append(took)
            if n % 10 == 0:
                log.add_correction(int(answer_id), author_id="u1", text=f"Cat {n}: once a day.", message_id=None,
                                   trusted=True)  # fmt: skip
        results["record_answer"] = _ms(record)
        results["set_vote"] = _ms(vote)
        results["answer_for_message"] = _ms(lookup)

        # Concurrent writers through one log, as the bot's to_thread workers use it.
        threads, per_thread = 4, 100
        barrier = threading.Barrier(threads)

        def work(worker: int) -> None:
            barrier.wait()
            for n in range(per_thread):
                answer_id = _answer(log, 10_000_000 + worker * per_thread + n, f"t{worker}")
                log.set_vote(answer_id, "voter", 1, True)

        start = time.perf_counter()
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(work, range(threads)))
        elapsed = time.perf_counter() - start
        results["concurrent"] = {
            "threads": threads,
            "answers_plus_votes": threads * per_thread,
            "seconds": round(elapsed, 3),
            "answers_per_s": round(threads * per_thread / elapsed, 1),
        }

        pairs, took = _timed(log.pairs)
        results["pairs_query"] = {"pairs": len(pairs), "ms": round(took * 1000, 2)}  # type: ignore[arg-type]
        _, took = _timed(log.stats)
        results["stats_ms"] = round(took * 1000, 2)
        out = Path(tmp) / "pairs.json"
        report, took = _timed(lambda: export_alpaca(pairs, out, eval_fraction=0.2))  # type: ignore[arg-type]
        results["export_alpaca"] = {
            "train": report.train,  # type: ignore[attr-defined]
            "eval": report.eval,  # type: ignore[attr-defined]
            "ms": round(took * 1000, 2),
        }
        read, took = _timed(lambda: read_dataset(out))
        results["read_dataset_ms"] = round(took * 1000, 2)
        fresh = FeedbackLog(Path(tmp) / "import.db")
        imported, took = _timed(lambda: fresh.import_pairs(read.rows, source="bench"))  # type: ignore[attr-defined]
        results["import_pairs"] = {"rows": imported.imported, "ms": round(took * 1000, 2)}  # type: ignore[attr-defined]
        fresh.close()
        forgot, took = _timed(lambda: log.forget_user("u1"))
        results["forget_user"] = {"pairs": forgot.pairs, "ms": round(took * 1000, 2)}  # type: ignore[attr-defined]
        results["db_mb"] = round((Path(tmp) / "fb.db").stat().st_size / 1e6, 2)
        log.close()

    dest = ROOT / "bench" / "results" / "feedback_log.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
