"""Many threads (and several connections) write the feedback log at once: nothing is lost."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from feedback.log import FeedbackLog
from feedback.migrations import MIGRATIONS

THREADS = 8
ANSWERS_PER_THREAD = 25


def _work(log: FeedbackLog, worker: int, barrier: threading.Barrier) -> list[int]:
    barrier.wait()  # start together so the writes really interleave
    ids = []
    for n in range(ANSWERS_PER_THREAD):
        answer_id = log.record_answer(
            guild_id="g",
            channel_id="c",
            user_id=f"asker-{worker}",
            question=f"Question {worker}-{n}?",
            context="ctx",
            chunk_ids=[],
            prompt="p",
            prompt_version="v1",
            adapter="v3",
            answer=f"Answer {worker}-{n}.",
            message_ids=[f"m-{worker}-{n}"],
        )
        log.set_vote(answer_id, f"voter-{worker}", 1, True)
        log.set_vote(answer_id, "everyone", 1, True)
        ids.append(answer_id)
    return ids


def test_many_threads_one_log_lose_nothing(tmp_path: Path) -> None:
    log = FeedbackLog(tmp_path / "fb.db")
    barrier = threading.Barrier(THREADS)
    with ThreadPoolExecutor(THREADS) as pool:
        results = list(pool.map(lambda w: _work(log, w, barrier), range(THREADS)))
    total = THREADS * ANSWERS_PER_THREAD
    ids = [i for chunk in results for i in chunk]
    assert len(set(ids)) == total
    stats = log.stats()
    assert (stats.answers, stats.upvotes, stats.pairs["positive"]) == (total, 2 * total, total)
    assert log.answer_for_message(f"m-{THREADS - 1}-{ANSWERS_PER_THREAD - 1}") is not None
    log.close()


def test_several_connections_to_one_file_lose_nothing(tmp_path: Path) -> None:
    # Separate FeedbackLog objects have separate connections, as separate processes would: the
    # SQLite lock (BEGIN IMMEDIATE + busy_timeout), not our thread lock, keeps them apart.
    path = tmp_path / "fb.db"
    logs = [FeedbackLog(path) for _ in range(4)]
    barrier = threading.Barrier(len(logs))
    with ThreadPoolExecutor(len(logs)) as pool:
        list(pool.map(lambda w: _work(logs[w], w, barrier), range(len(logs))))
    stats = FeedbackLog(path).stats()
    assert (stats.answers, stats.upvotes) == (4 * ANSWERS_PER_THREAD, 8 * ANSWERS_PER_THREAD)
    for log in logs:
        log.close()


async def test_the_bot_pattern_asyncio_to_thread(tmp_path: Path) -> None:
    log = FeedbackLog(tmp_path / "fb.db")
    answer_id = await asyncio.to_thread(_work, log, 0, threading.Barrier(1))
    voters = [f"u{i}" for i in range(40)]
    # Reactions arrive concurrently and some twice (Discord can redeliver an event).
    await asyncio.gather(
        *(asyncio.to_thread(log.set_vote, answer_id[0], v, -1, True) for v in voters + voters[:10])
    )
    record = await asyncio.to_thread(log.get_answer, answer_id[0])
    assert record is not None
    assert (record.upvotes, record.downvotes) == (2, 40)
    assert [p.answer_id for p in log.pairs(kinds=("negative",))] == [answer_id[0]]
    log.close()


def test_opening_a_new_database_from_many_threads_migrates_once(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    barrier = threading.Barrier(6)

    def open_log(_: int) -> list[str]:
        barrier.wait()
        log = FeedbackLog(path)
        log.close()
        return log.db.applied

    with ThreadPoolExecutor(6) as pool:
        applied = list(pool.map(open_log, range(6)))
    # exactly one opener applied every migration
    assert sorted(len(names) for names in applied) == [0, 0, 0, 0, 0, len(MIGRATIONS)]
