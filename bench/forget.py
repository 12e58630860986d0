"""Benchmark `/forget` end to end: a member with 1,000 personal records and 200 pairs, among others.

    python bench/forget.py [--records 1000] [--pairs 200]

Builds a temp data dir with the real parts (embedded Chroma + the packaged embedder + the lexical
index, the SQLite feedback log, a guild registry with a version trained on the member's pairs),
then times ``bot.usecases.knowledge.forget_member`` (what `/forget` and `loopbot forget` call):
delete + compact the store, delete + scrub the log (secure delete, WAL checkpoint, VACUUM), scrub the
stored datasets and retire the adapter. Checks afterwards that no file under the data dir holds
the member's text. Writes ``bench/results/forget.json``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, write  # noqa: E402

GUILD, MEMBER, OTHER = "1001", "2001", "2002"
MARK = "Zyxwaltz"  # in every text of the member's: the search for leftovers looks for it


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1000)
    parser.add_argument("--pairs", type=int, default=200)
    args = parser.parse_args()

    import chromadb
    from chromadb.config import Settings as ChromaSettings

    from adapters.registry import guild_registry
    from bot.usecases.knowledge import forget_member
    from feedback.log import FeedbackLog
    from ingest import text_chunks
    from knowledge.embeddings import load_embeddings
    from knowledge.store import KnowledgeBase

    data = Path(tempfile.mkdtemp(prefix="loopbot-forget-"))
    embeddings = load_embeddings("")
    client = chromadb.PersistentClient(
        path=str(data / "chroma"), settings=ChromaSettings(anonymized_telemetry=False)
    )
    kb = KnowledgeBase(
        client, embeddings, lexical_path=data / "chroma" / "lexical.db", persist_dir=data / "chroma"
    )
    log = FeedbackLog(data / "loopbot.db")
    t = time.perf_counter()
    for owner, count in ((MEMBER, args.records), (OTHER, args.records // 10)):
        chunks = []
        for n in range(count):
            word = MARK if owner == MEMBER else "Other"
            text = (
                f"{word} note {n}: Mochi sneezed {n % 7} times on day {n}; the vet said it was a mild cold."
            )
            chunks += text_chunks(text, source=f"note-{n}", scope="personal", guild_id=GUILD, owner_id=owner)
        kb.add(chunks)
    setup_kb = time.perf_counter() - t
    for n in range(args.pairs):
        answer_id = log.record_answer(
            guild_id=GUILD, channel_id="c", user_id=MEMBER, question=f"{MARK} question {n}?",
            context=f"[1] (note-{n}) {MARK} note {n}", chunk_ids=[], prompt="p", prompt_version="t",
            adapter=None, answer=f"{MARK} answer {n}",
        )  # fmt: skip
        log.add_correction(answer_id, author_id=MEMBER, text=f"{MARK} fix {n}", message_id=None, trusted=True)
    her_pairs = [str(p.id) for p in log.pairs()]
    registry = guild_registry(data / "adapters", GUILD)
    with registry.stage() as stage:
        (stage.path / "adapter_model.safetensors").write_bytes(b"weights")
        (stage.path / "dataset.jsonl").write_text(f'{{"completion": "{MARK}"}}\n', encoding="utf-8")
        version = registry.publish(stage, {"base_model": "b", "pair_ids": her_pairs})
    registry.promote(version.version)
    before = [p for p in data.rglob("*") if p.is_file() and MARK.encode() in p.read_bytes()]

    load = machine()["load_average"]
    t = time.perf_counter()
    summary = forget_member(kb, log, MEMBER, adapters_dir=data / "adapters")
    seconds = time.perf_counter() - t
    leftovers = [
        str(p.relative_to(data)) for p in data.rglob("*") if p.is_file() and MARK.encode() in p.read_bytes()
    ]
    kb.close()
    log.close()
    write(
        "forget",
        {
            "records": args.records,
            "pairs": args.pairs,
            "other_member_records": args.records // 10,
            "forget_seconds": round(seconds, 2),
            "deleted": {"records": summary.records, "pairs": summary.pairs, "answers": summary.answers},
            "adapter_replaced": summary.replaced,
            "files_holding_the_text_before": len(before),
            "files_holding_the_text_after": leftovers,
            "setup_seconds_embedding": round(setup_kb, 1),
            "load_average_before": load,
            "machine": machine(),
        },
    )


if __name__ == "__main__":
    main()
