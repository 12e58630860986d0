"""The knowledge base on a real temp-dir Chroma with the real packaged embedder: scopes, privacy,
idempotence, replace/delete/forget, bad input, and the one-writer lock across processes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import chromadb
import pytest

from knowledge.errors import KnowledgeError
from knowledge.lock import StoreLock
from knowledge.scopes import community_collection, personal_collection
from knowledge.store import KnowledgeBase
from knowledge.types import Chunk

REPO = Path(__file__).resolve().parents[2]

A_RECORDS = [
    "Mochi sneezed twice a day in March 2024; the vet said it was a mild cold.",
    "Mochi's microchip number is 392-145-778-001, registered with PetTrace.",
    "I give Mochi half a tablet of Felimazole every morning with tuna.",
    "Mochiの体重は2024年5月に4.8キロでした。獣医さんにダイエットを勧められました。",
]
COMMUNITY = [
    "Cats should always have fresh, clean water; change the bowl daily.",
    "Sneezing with watery eyes is often cat flu; see a vet if it lasts more than a few days.",
    "Microchipping is a quick injection between the shoulder blades.",
    "Adult cats sleep 12 to 16 hours a day.",
]


def community(i: int, text: str, guild: str = "100", source: str = "faq.md") -> Chunk:
    return Chunk(id=f"c{guild}-{i}", text=text, source=source, scope="community", guild_id=guild)


def personal(i: int, text: str, owner: str, guild: str = "100", source: str = "remember") -> Chunk:
    return Chunk(
        id=f"p{guild}-{owner}-{i}", text=text, source=source, scope="personal", guild_id=guild, owner_id=owner
    )


@pytest.fixture
def kb(tmp_path: Path, packaged_embeddings: object):
    client = chromadb.PersistentClient(str(tmp_path / "chroma"))
    base = KnowledgeBase(
        client,
        packaged_embeddings,
        lexical_path=tmp_path / "lexical.db",
        lock=StoreLock(tmp_path / "chroma"),
        persist_dir=tmp_path / "chroma",
    )
    yield base
    base.close()


@pytest.fixture
def filled(kb: KnowledgeBase) -> KnowledgeBase:
    kb.add([community(i, t) for i, t in enumerate(COMMUNITY)])
    kb.add([personal(i, t, owner="1") for i, t in enumerate(A_RECORDS)])
    kb.add([personal(0, "Biscuit hates the vacuum cleaner and hides under the bed.", owner="2")])
    kb.add([community(0, "Guild 200 secret: the meetup password is 'whiskers'.", guild="200")])
    return kb


def test_add_is_idempotent_and_counts(kb: KnowledgeBase) -> None:
    chunks = [community(i, t) for i, t in enumerate(COMMUNITY)]
    first = kb.add(chunks)
    second = kb.add(chunks)
    assert (first.added, first.unchanged) == (4, 0)
    assert (second.added, second.unchanged) == (0, 4)
    stats = kb.stats()
    assert stats["community_chunks"] == 4 and stats["community_by_guild"] == {"100": 4}
    assert stats["lexical_rows"] == 4


def test_own_records_and_community_are_found(filled: KnowledgeBase) -> None:
    hits = filled.search("When did Mochi sneeze and what did the vet say?", guild_id="100", user_id="1", k=3)
    assert hits[0].chunk.text == A_RECORDS[0]
    assert hits[0].chunk.scope == "personal" and hits[0].chunk.owner_id == "1"
    assert any(h.chunk.scope == "community" for h in hits)
    assert all(a.score >= b.score for a, b in zip(hits, hits[1:], strict=False))
    japanese = filled.search("Mochiの体重はどのくらい？", guild_id="100", user_id="1", k=3)
    assert japanese[0].chunk.text == A_RECORDS[3]  # a Japanese question finds the Japanese record


QUESTIONS = [
    *A_RECORDS,  # verbatim quotes of A's records
    "When did Mochi sneeze?",
    "What is Mochi's microchip number?",
    "What medication does Mochi take?",
    "Mochiの体重は？",
    "PetTrace 392-145-778-001",
    "Felimazole",
    "tell me everything about Mochi",
]


@pytest.mark.parametrize("asker", ["2", "3", None])
def test_a_personal_records_never_reach_other_members(filled: KnowledgeBase, asker: str | None) -> None:
    for question in QUESTIONS:
        for hit in filled.search(question, guild_id="100", user_id=asker, k=10):
            assert hit.chunk.owner_id in (None, asker), question
            assert hit.chunk.text not in A_RECORDS, question


def test_guilds_do_not_see_each_other(filled: KnowledgeBase) -> None:
    for hit in filled.search("what is the meetup password?", guild_id="100", user_id="1", k=10):
        assert hit.chunk.guild_id == "100"
    # the same member in another guild does not see their guild-100 records
    assert all(
        h.chunk.owner_id is None for h in filled.search(A_RECORDS[0], guild_id="200", user_id="1", k=10)
    )


def test_empty_scope_returns_nothing(kb: KnowledgeBase) -> None:
    assert kb.search("anything", guild_id="999", user_id="5") == []


def test_replace_source_drops_stale_chunks(kb: KnowledgeBase) -> None:
    old = [community(i, t, source="guide.md") for i, t in enumerate(COMMUNITY)]
    kb.replace_source("guide.md", old, guild_id="100")
    new = [old[0], old[1], community(9, "Brush long-haired cats every day.", source="guide.md")]
    report = kb.replace_source("guide.md", new, guild_id="100")
    assert (report.added, report.unchanged, report.replaced) == (1, 2, 2)
    assert sorted(kb.get_source_ids("guide.md", guild_id="100")) == sorted(c.id for c in new)
    texts = [h.chunk.text for h in kb.search("How long do cats sleep?", guild_id="100", user_id=None, k=10)]
    assert COMMUNITY[3] not in texts
    assert kb.lexical is not None and kb.lexical.count() == 3


def test_delete_source_only_touches_that_scope(filled: KnowledgeBase) -> None:
    filled.add([personal(9, "My own faq note.", owner="1", source="faq.md")])
    assert filled.delete_source("faq.md", guild_id="100") == 4
    assert filled.stats()["community_by_guild"] == {"100": 0, "200": 1}
    assert filled.get_source_ids("faq.md", guild_id="100", owner_id="1")  # personal one kept
    assert filled.delete_source("faq.md", guild_id="100", owner_id="1") == 1
    assert filled.delete_source("nope.md") == 0


def test_forget_user_removes_every_record_in_every_guild(filled: KnowledgeBase) -> None:
    filled.add([personal(0, "Mochi's other record in guild 200.", owner="1", guild="200")])
    before = filled.stats()
    assert filled.forget_user("1") == len(A_RECORDS) + 1
    after = filled.stats()
    assert after["personal_records"] == before["personal_records"] - len(A_RECORDS) - 1
    assert after["members_with_records"] == 1  # member 2 keeps theirs
    for question in QUESTIONS:
        assert all(
            h.chunk.owner_id != "1" for h in filled.search(question, guild_id="100", user_id="1", k=10)
        )
    assert filled.search("vacuum cleaner", guild_id="100", user_id="2", k=1)[0].chunk.owner_id == "2"
    assert filled.forget_user("1") == 0


def test_forgotten_text_leaves_the_disk(filled: KnowledgeBase, tmp_path: Path) -> None:
    secret = b"Felimazole"
    assert any(secret in p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())
    filled.forget_user("1")
    assert [p for p in tmp_path.rglob("*") if p.is_file() and secret in p.read_bytes()] == []


@pytest.mark.parametrize(
    "chunk",
    [
        Chunk(id="x", text="t", source="s", scope="personal", guild_id="1"),  # no owner
        Chunk(id="x", text="t", source="s", scope="community", guild_id="1", owner_id="2"),  # owned post
        Chunk(id="x", text="t", source="s", scope="public", guild_id="1"),  # type: ignore[arg-type]
        Chunk(id="x", text="   ", source="s", scope="community", guild_id="1"),  # empty
        Chunk(id="x", text="t", source="s", scope="community", guild_id="a-b"),  # would break naming
        Chunk(id="x", text="t", source="s", scope="community", guild_id=""),
    ],
)
def test_bad_chunks_are_refused(kb: KnowledgeBase, chunk: Chunk) -> None:
    with pytest.raises(KnowledgeError):
        kb.add([chunk])
    assert kb.stats()["community_chunks"] == 0


def test_bad_queries_are_refused(filled: KnowledgeBase) -> None:
    with pytest.raises(KnowledgeError, match="k must be"):
        filled.search("x", guild_id="100", user_id=None, k=0)
    with pytest.raises(KnowledgeError, match="user id"):
        filled.search("x", guild_id="100", user_id="../1")
    with pytest.raises(KnowledgeError, match="user id"):
        filled.forget_user("1-2")


def test_collection_names_are_valid_for_chroma() -> None:
    assert community_collection("1") == "c-1"
    assert personal_collection("1", "2") == "p-1-2"
    long_id = "9" * 100
    assert 3 <= len(personal_collection(long_id, long_id)) <= 512


def test_another_embedder_is_refused(tmp_path: Path, packaged_embeddings: object) -> None:
    from knowledge.embeddings import NoEmbeddings

    client = chromadb.PersistentClient(str(tmp_path / "chroma"))
    KnowledgeBase(client, packaged_embeddings).add([community(0, COMMUNITY[0])])
    other = KnowledgeBase(client, NoEmbeddings("some/other-model"))
    with pytest.raises(KnowledgeError, match="built with the embedder"):
        other.delete_source("faq.md")


SECOND_PROCESS = """
import sys, chromadb
from pathlib import Path
from knowledge.embeddings import NoEmbeddings
from knowledge.errors import KnowledgeError
from knowledge.lock import StoreLock
from knowledge.store import KnowledgeBase
from knowledge.types import Chunk
root = Path(sys.argv[1])
kb = KnowledgeBase(chromadb.PersistentClient(str(root)), NoEmbeddings(), lock=StoreLock(root))
try:
    print("removed", kb.delete_source("faq.md", guild_id="100"))
except KnowledgeError as error:
    print("refused:", error)
"""


def _second_process(root: Path) -> str:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", SECOND_PROCESS, str(root)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


def test_second_process_cannot_write_while_first_owns_the_store(
    tmp_path: Path, packaged_embeddings: object
) -> None:
    root = tmp_path / "chroma"
    kb = KnowledgeBase(chromadb.PersistentClient(str(root)), packaged_embeddings, lock=StoreLock(root))
    kb.add([community(i, t) for i, t in enumerate(COMMUNITY)])
    line = _second_process(root)
    assert line.startswith("refused:"), line
    assert "another loopbot process" in line and str(root) in line and "LOOPBOT_KB_CHROMA_HOST" in line
    assert f"pid {os.getpid()}" in line
    assert kb.stats()["community_chunks"] == 4  # nothing lost
    for text in COMMUNITY:
        assert kb.search(text, guild_id="100", user_id=None, k=1)[0].chunk.text == text
    kb.close()  # the owner leaves: now the other process may write
    assert _second_process(root) == "removed 4"


@pytest.fixture
def chroma_server(tmp_path: Path):
    """A real Chroma server (``chroma run``) on a free port, stopped after the test."""
    import shutil
    import socket
    import time
    import urllib.request

    exe = shutil.which("chroma") or str(Path(sys.executable).parent / "chroma")
    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [exe, "run", "--path", str(tmp_path / "server"), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"http://localhost:{port}/api/v2/heartbeat", timeout=1)
                break
            except OSError:
                time.sleep(0.25)
        else:
            pytest.fail("the Chroma server did not start")
        yield port
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_chroma_server_mode_has_no_lock_and_shares_data(
    chroma_server: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, packaged_embeddings
) -> None:
    from bot.settings import load_settings
    from bot.wiring import build_knowledge_base

    monkeypatch.setenv("LOOPBOT_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("LOOPBOT_KB_CHROMA_HOST", "localhost")
    monkeypatch.setenv("LOOPBOT_KB_CHROMA_PORT", str(chroma_server))
    settings = load_settings()
    first = build_knowledge_base(settings, embeddings=packaged_embeddings)
    second = build_knowledge_base(settings, embeddings=packaged_embeddings)  # e.g. another bot shard
    assert first.lock is None and not (tmp_path / "data" / "chroma").exists()
    first.add([community(0, COMMUNITY[3])])
    second.add([personal(0, A_RECORDS[0], owner="1")])  # no lock: both may write
    hits = first.search("When did Mochi sneeze?", guild_id="100", user_id="1", k=2)
    assert [h.chunk.text for h in hits][0] == A_RECORDS[0]
    assert second.forget_user("1") == 1
    assert all(h.chunk.owner_id is None for h in first.search(A_RECORDS[0], guild_id="100", user_id="1", k=5))
    first.close()
    second.close()


def test_unreachable_chroma_server_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from bot.settings import load_settings
    from bot.wiring import build_knowledge_base
    from knowledge.embeddings import NoEmbeddings

    monkeypatch.setenv("LOOPBOT_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("LOOPBOT_KB_CHROMA_HOST", "localhost")
    monkeypatch.setenv("LOOPBOT_KB_CHROMA_PORT", "1")
    with pytest.raises(KnowledgeError, match="cannot reach the Chroma server localhost:1"):
        build_knowledge_base(load_settings(), embeddings=NoEmbeddings())
