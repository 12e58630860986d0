"""Every supported file type written for real, every bad input reported with what to do, limits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ingest import IngestLimits, load_bytes, load_files
from ingest.chunking import CJK_CHAR_COST, chunk_id, text_length
from ingest.errors import IngestError

DISCORD_EXPORT = {
    "guild": {"id": "100", "name": "Cat Owners"},
    "channel": {"id": "555", "name": "help"},
    "messages": [
        {
            "id": "1",
            "timestamp": "2024-03-01T10:00:00+00:00",
            "content": "How often should I change the litter?",
            "author": {"id": "11", "name": "aiko"},
        },
        {
            "id": "2",
            "timestamp": "2024-03-01T10:05:00+00:00",
            "content": "Scoop daily, replace it all every two weeks.",
            "author": {"id": "12", "name": "ben"},
        },
        {
            "id": "3",
            "timestamp": "2024-03-01T10:06:00+00:00",
            "content": "",
            "author": {"id": "12", "name": "ben"},
        },
    ],
}


@pytest.fixture
def files(tmp_path: Path, pdf_bytes) -> Path:  # type: ignore[no-untyped-def]
    root = tmp_path / "kb"
    root.mkdir()
    (root / "notes.txt").write_text("Mochi likes tuna.\n\nShe sleeps on the heater.", encoding="utf-8")
    (root / "guide.md").write_text(
        "# Water\n\nChange the water bowl daily.\n\n## Food\n\nTwo meals a day.", encoding="utf-8"
    )
    (root / "page.html").write_text(
        "<html><head><style>p{color:red}</style><script>var secret=1;</script></head>"
        "<body><h1>Claws</h1><p>Trim claws every 2 to 3 weeks.</p></body></html>",
        encoding="utf-8",
    )
    (root / "vets.csv").write_text(
        "name,city,phone\nHappy Paws,Tokyo,03-1234\nCat Clinic,Osaka,06-9876\n", encoding="utf-8"
    )
    (root / "qa.jsonl").write_text(
        json.dumps({"question": "How long do cats sleep?", "answer": "12 to 16 hours."})
        + "\n"
        + json.dumps(
            {"question": "猫は牛乳を飲めますか？", "answer": "多くの猫は乳糖不耐症です。"}, ensure_ascii=False
        )
        + "\n",
        encoding="utf-8",
    )
    (root / "export.json").write_text(json.dumps(DISCORD_EXPORT), encoding="utf-8")
    (root / "leaflet.pdf").write_bytes(
        pdf_bytes([["Vaccinate kittens at 6 to 8 weeks.", "Boosters every 3 to 4 weeks."]])
    )
    return root


def test_every_type_loads_with_provenance(files: Path) -> None:
    report = load_files([files], scope="community", guild_id="100")
    assert report.problems == []
    assert report.files == 7
    by_source = {source: " ".join(c.text for c in chunks) for source, chunks in report.by_source.items()}
    assert "Mochi likes tuna." in by_source["kb/notes.txt"]
    assert "Change the water bowl daily." in by_source["kb/guide.md"]
    assert (
        "Trim claws every 2 to 3 weeks." in by_source["kb/page.html"]
        and "secret" not in by_source["kb/page.html"]
    )
    assert "name: Happy Paws" in by_source["kb/vets.csv"] and "phone: 06-9876" in by_source["kb/vets.csv"]
    assert "Q: How long do cats sleep?\nA: 12 to 16 hours." in by_source["kb/qa.jsonl"]
    assert "多くの猫は乳糖不耐症です。" in by_source["kb/qa.jsonl"]
    assert "Vaccinate kittens at 6 to 8 weeks." in by_source["kb/leaflet.pdf"]
    discord = report.by_source["kb/export.json"]
    assert [c.author for c in discord] == ["aiko", "ben"]  # the empty message is skipped
    assert discord[1].timestamp == "2024-03-01T10:05:00+00:00" and discord[1].text.startswith(
        "ben: Scoop daily"
    )
    for chunk in report.chunks:
        assert (chunk.scope, chunk.guild_id, chunk.owner_id) == ("community", "100", None)


def test_personal_scope_keeps_owner(files: Path) -> None:
    report = load_files([files / "notes.txt"], scope="personal", guild_id="100", owner_id="7")
    assert {(c.scope, c.owner_id, c.source) for c in report.chunks} == {("personal", "7", "notes.txt")}


def test_chunk_ids_are_deterministic_and_scoped(files: Path) -> None:
    one = load_files([files], scope="community", guild_id="100")
    two = load_files([files], scope="community", guild_id="100")
    mine = load_files([files], scope="personal", guild_id="100", owner_id="7")
    assert [c.id for c in one.chunks] == [c.id for c in two.chunks]
    assert not {c.id for c in one.chunks} & {c.id for c in mine.chunks}
    assert chunk_id("community", "1", None, "a", 0, "t") != chunk_id("community", "1", None, "a", 1, "t")


def test_long_text_is_split_with_overlap(tmp_path: Path) -> None:
    sentences = [f"Sentence number {i} is about cat number {i}." for i in range(200)]
    (tmp_path / "long.txt").write_text(" ".join(sentences), encoding="utf-8")
    report = load_files(
        [tmp_path / "long.txt"],
        scope="community",
        guild_id="1",
        limits=IngestLimits(chunk_size=300),
    )
    assert len(report.chunks) > 10
    assert all(len(c.text) <= 300 for c in report.chunks)
    assert "Sentence number 199" in report.chunks[-1].text


def test_japanese_text_is_split_at_sentence_marks(tmp_path: Path) -> None:
    (tmp_path / "ja.txt").write_text("猫はよく眠ります。" * 80, encoding="utf-8")
    report = load_files(
        [tmp_path / "ja.txt"],
        scope="community",
        guild_id="1",
        limits=IngestLimits(chunk_size=100),
    )
    assert len(report.chunks) > 3 and all(c.text.endswith("。") for c in report.chunks)


def test_japanese_chunks_cost_the_prompt_what_english_ones_do(tmp_path: Path) -> None:
    """A Japanese character costs the tokenizer several Latin ones: chunks are measured so, and a FAQ of
    ~200-character sections is split per section, not three sections to a chunk."""
    assert text_length("猫 cat") == 5 + CJK_CHAR_COST - 1
    section = "お茶会は毎月第3日曜日に開いています。" * 10  # 190 characters, ~300 tokens
    faq = "\n\n".join(f"## 質問{i}\n\n{section}" for i in range(4))
    (tmp_path / "faq.md").write_text(faq, encoding="utf-8")
    report = load_files([tmp_path / "faq.md"], scope="community", guild_id="1")  # default limits
    assert [c.text[:6] for c in report.chunks] == [f"## 質問{i}" for i in range(4)]
    assert all(text_length(c.text) <= 800 for c in report.chunks)


def test_bad_files_are_reported_and_skipped(tmp_path: Path) -> None:
    (tmp_path / "good.txt").write_text("A good note about cats.", encoding="utf-8")
    (tmp_path / "binary.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    (tmp_path / "latin1.md").write_bytes("Caf\xe9 notes".encode("latin-1"))
    (tmp_path / "empty.txt").write_text("", encoding="utf-8")
    (tmp_path / "broken.pdf").write_bytes(b"%PDF-1.4\nthis is not a pdf")
    (tmp_path / "export.json").write_text('{"not": "an export"}', encoding="utf-8")
    (tmp_path / "bad.json").write_text('{"messages": [', encoding="utf-8")
    (tmp_path / "image.png").write_bytes(b"\x89PNG")
    paths = sorted(tmp_path.iterdir())
    report = load_files(paths, scope="community", guild_id="1")
    assert list(report.by_source) == ["good.txt"]
    text = "\n".join(report.problems)
    assert "binary.txt: looks like a binary file" in text
    assert "latin1.md: is not UTF-8 text" in text and "re-save it as UTF-8" in text
    assert "empty.txt: the file is empty" in text
    assert "broken.pdf: not a readable PDF" in text
    assert "export.json: not a DiscordChatExporter export" in text
    assert "bad.json: not valid JSON" in text
    assert "image.png: unsupported file type .png" in text
    assert len(report.problems) == 7 and all(p.endswith("skipped") for p in report.problems)


def test_malformed_jsonl_lines_are_reported_with_line_numbers(tmp_path: Path) -> None:
    lines = [
        json.dumps({"question": "Q1?", "answer": "A1."}),
        "{not json",
        json.dumps(["a", "list"]),
        "",
        json.dumps({"unrelated": 1}),
        json.dumps({"instruction": "Q5?", "output": "A5."}),
        json.dumps({"text": "plain record", "author": "aiko"}),
    ]
    (tmp_path / "qa.jsonl").write_text("\n".join(lines), encoding="utf-8")
    report = load_files([tmp_path / "qa.jsonl"], scope="community", guild_id="1")
    assert [c.text for c in report.chunks] == ["Q: Q1?\nA: A1.", "Q: Q5?\nA: A5.", "plain record"]
    assert report.chunks[2].author == "aiko"
    assert [p.split(":")[0] for p in report.problems] == [
        "qa.jsonl line 2",
        "qa.jsonl line 3",
        "qa.jsonl line 5",
    ]


def test_csv_rows_with_wrong_field_count_are_skipped(tmp_path: Path) -> None:
    (tmp_path / "q.csv").write_text("question,answer\nHow old?,Two.\nbroken row,with,extra\nWhere?,Here.\n")
    report = load_files([tmp_path / "q.csv"], scope="community", guild_id="1")
    assert [c.text for c in report.chunks] == ["Q: How old?\nA: Two.", "Q: Where?\nA: Here."]
    assert report.problems == ["q.csv line 3: 3 fields but the header has 2; skipped"]


def test_file_size_limit(tmp_path: Path) -> None:
    (tmp_path / "big.txt").write_text("cat " * 300_000, encoding="utf-8")  # 1.2 MB
    (tmp_path / "small.txt").write_text("small", encoding="utf-8")
    limits = IngestLimits(max_file_mb=1)
    report = load_files(
        [tmp_path / "big.txt", tmp_path / "small.txt"], scope="community", guild_id="1", limits=limits
    )
    assert list(report.by_source) == ["small.txt"]
    assert report.problems[0].startswith("big.txt: 1.2 MB is over the 1 MB limit")
    upload = load_bytes("big.txt", b"x" * 1_500_000, scope="community", guild_id="1", limits=limits)
    assert upload.chunks == [] and "over the 1 MB limit" in upload.problems[0]


def test_file_count_limit_refuses_whole_ingest(tmp_path: Path) -> None:
    for i in range(4):
        (tmp_path / f"{i}.txt").write_text(f"note {i}", encoding="utf-8")
    with pytest.raises(IngestError, match="4 files to ingest but the limit is 3"):
        load_files([tmp_path], scope="community", guild_id="1", limits=IngestLimits(max_files=3))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"scope": "personal", "guild_id": "1"}, "need an owner"),
        ({"scope": "community", "guild_id": "1", "owner_id": "2"}, "have no owner"),
        ({"scope": "everyone", "guild_id": "1"}, "scope must be"),
        ({"scope": "community", "guild_id": ""}, "which guild"),
    ],
)
def test_bad_scope_arguments(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(IngestError, match=message):
        load_bytes("a.txt", b"text", **kwargs)


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(IngestError, match="no such file"):
        load_files([tmp_path / "nope.txt"], scope="community", guild_id="1")


def test_load_bytes_matches_load_files(files: Path) -> None:
    data = (files / "leaflet.pdf").read_bytes()
    upload = load_bytes("leaflet.pdf", data, scope="community", guild_id="100")
    from_disk = load_files([files / "leaflet.pdf"], scope="community", guild_id="100")
    assert [c.id for c in upload.chunks] == [c.id for c in from_disk.chunks]
    named = load_bytes("x.pdf", data, scope="community", guild_id="100", source="uploads/leaflet.pdf")
    assert {c.source for c in named.chunks} == {"uploads/leaflet.pdf"}


def test_discord_export_from_another_guild_is_refused(files: Path) -> None:
    report = load_files([files / "export.json"], scope="community", guild_id="999")
    assert report.chunks == [] and "ingest it with --guild 100" in report.problems[0]
