"""Documents as communities write them: hard-wrapped markdown, plain text, PDF pages, HTML pages.

Every format becomes sections (heading + unwrapped text); chunks never join two sections; the one
sentence splitter never cuts a sentence at a line break nor joins two sections or list items.
"""

from __future__ import annotations

import textwrap

import pytest

from ingest import load_bytes
from ingest.chunking import chunk_sections
from ingest.loaders import load_document
from knowledge.evidence import sentences
from knowledge.text import split_sentences, unwrap

WIKI = b"""# Northbrook Cat Society wiki

Welcome to the members' wiki. Read the house rules
before you post.

## Meetings
We meet on the first Tuesday of each month at 7pm in the back room of the Northbrook
Arms, 12 Mill Lane. Bring
your own mug.

## Membership
Membership costs 18 pounds a year. Pay the treasurer, Gwen Adeyemi, by bank
transfer or in cash at a meeting.

- Juniors (under 16) pay
  half price.
- Seniors pay 10 pounds.

## Vets

| Clinic | Phone |
|--------|-------|
| Riverside Veterinary Hospital | 0161 555 0142 |
| Hollybank Vets | 0161 555 0199 |

For emergencies out of hours, the society recommends Riverside Veterinary Hospital,
open 24 hours.
"""


def _sections(name: str, data: bytes) -> list[tuple[str | None, str]]:
    return [(s.title, s.text) for s in load_document(name, data).sections]


def test_a_hard_wrapped_wiki_becomes_one_section_per_heading_with_whole_sentences() -> None:
    sections = dict(_sections("wiki.md", WIKI))
    assert list(sections) == ["Northbrook Cat Society wiki", "Meetings", "Membership", "Vets"]
    # Lines of a paragraph joined; nothing of the next section in it.
    assert sections["Meetings"] == (
        "We meet on the first Tuesday of each month at 7pm in the back room of the Northbrook Arms, "
        "12 Mill Lane. Bring your own mug."
    )
    # A list item and its indented continuation are one unit; the list stays apart from the paragraph.
    assert "- Juniors (under 16) pay half price.\n- Seniors pay 10 pounds." in sections["Membership"]
    said = sentences(sections["Meetings"]) + sentences(sections["Membership"])
    assert "Membership costs 18 pounds a year." in said
    assert "Juniors (under 16) pay half price." in said
    assert not any("Northbrook Membership" in s or "Arms Membership" in s for s in said)


def test_chunks_are_sections_and_carry_their_title() -> None:
    report = load_bytes("wiki.md", WIKI, scope="community", guild_id="9")
    chunks = report.chunks
    assert [c.section for c in chunks] == ["Northbrook Cat Society wiki", "Meetings", "Membership", "Vets"]
    assert chunks[1].text.startswith("## Meetings\n\n") and "Membership" not in chunks[1].text
    assert chunks[2].citation() == "wiki.md › Membership"
    assert chunks[2].metadata()["section"] == "Membership"
    # A table is kept whole, its rows read with the header's names.
    vets = sentences(chunks[3].text)
    assert "Clinic: Riverside Veterinary Hospital; Phone: 0161 555 0142" in vets
    assert vets[-1] == (
        "For emergencies out of hours, the society recommends Riverside Veterinary Hospital, open 24 hours."
    )


def test_a_long_section_is_cut_between_sentences_and_every_piece_keeps_the_heading() -> None:
    body = " ".join(f"Rule {i} says members bring snacks on turn {i} of the rota." for i in range(30))
    wrapped = "\n".join(textwrap.wrap(body, 70))
    sections = load_document("rules.md", f"## House rules\n{wrapped}\n".encode()).sections
    chunks = chunk_sections(sections, source="rules.md", scope="community", guild_id="9", chunk_size=300)
    assert len(chunks) > 3
    for chunk in chunks:
        assert chunk.text.startswith("## House rules\n\n") and len(chunk.text) <= 300
        body_sentences = split_sentences(chunk.text.split("\n\n", 1)[1])
        assert all(s.startswith("Rule ") and s.endswith("rota.") for s in body_sentences)


def test_plain_text_headings_are_found_and_lines_rejoined() -> None:
    text = (
        b"WHAT TO BRING\n\nBring a spare inner tube, a pump and two tyre levers. Riders without\n"
        b"lights stay home in winter.\n\nThe Cafe Stop\nWe stop at the Old Mill cafe in Ashby. Coffee is\n"
        b"about 3 pounds.\n"
    )
    assert _sections("handbook.txt", text) == [
        (
            "WHAT TO BRING",
            "Bring a spare inner tube, a pump and two tyre levers. Riders without lights stay home in winter.",
        ),
        ("The Cafe Stop", "We stop at the Old Mill cafe in Ashby. Coffee is about 3 pounds."),
    ]


def test_a_pdf_handbook_keeps_its_pages_sections_and_sentences(pdf_bytes) -> None:  # type: ignore[no-untyped-def]
    pages = [
        [
            "Riders' Handbook",
            "Welcome! This handbook covers your first rides with the club and what",
            "to expect on them.",
            "Group Riding",
            "Ride in pairs with your handlebars level with your partner's, about a",
            "metre from the kerb. Call out holes and parked cars.",
        ],
        [
            "and single out when the leader calls it, never before.",
            "Winter Riding",
            "From 1 November full mudguards are compulsory on club rides, so the",
            "rider behind you stays dry.",
        ],
    ]
    loaded = load_document("handbook.pdf", pdf_bytes(pages)).sections
    by_title = {(s.title, s.page): s.text for s in loaded}
    assert by_title[("Group Riding", 1)] == (
        "Ride in pairs with your handlebars level with your partner's, about a metre from the kerb. "
        "Call out holes and parked cars."
    )
    # A section running onto the next page keeps its title there.
    assert by_title[("Group Riding", 2)] == "and single out when the leader calls it, never before."
    assert by_title[("Winter Riding", 2)] == (
        "From 1 November full mudguards are compulsory on club rides, so the rider behind you stays dry."
    )
    chunks = chunk_sections(loaded, source="handbook.pdf", scope="community", guild_id="9")
    assert "handbook.pdf p. 2 › Winter Riding" in [c.citation() for c in chunks]


def test_an_html_page_keeps_headings_lists_and_tables_and_drops_its_furniture() -> None:
    page = b"""<!DOCTYPE html><html><head><title>Events</title><style>p {color: red}</style></head><body>
    <nav><a href="/">Home</a> <a href="/join">Join</a></nav><!-- build 42 -->
    <h1>Club events</h1>
    <h2>Annual dinner</h2>
    <p>The annual dinner is on
       Saturday 22 November at Fellside Hall.
       Tickets cost 32 pounds.</p>
    <ul><li>Vegetarian option</li><li>Bar until late</li></ul>
    <h2>Season</h2>
    <table><tr><th>Date</th><th>Event</th></tr><tr><td>5 April</td><td>Hill climb</td></tr></table>
    <footer>&copy; 2026 Harrowgate CC</footer></body></html>"""
    sections = dict(_sections("events.html", page))
    assert list(sections) == ["Annual dinner", "Season"]
    assert sections["Annual dinner"].startswith(
        "The annual dinner is on Saturday 22 November at Fellside Hall. Tickets cost 32 pounds."
    )
    assert "- Vegetarian option\n- Bar until late" in sections["Annual dinner"]
    assert sentences(sections["Season"]) == ["Date: 5 April; Event: Hill climb"]
    everything = " ".join(sections.values())
    assert "Home" not in everything and "2026" not in everything and "build" not in everything


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "A sentence that runs over\na line break. And another one.",
            ["A sentence that runs over a line break.", "And another one."],
        ),
        (
            "Question: Who is the treasurer?\nAnswer: Gwen Adeyemi.",
            ["Question: Who is the treasurer?", "Answer: Gwen Adeyemi."],
        ),
        (
            "Ask Dr. Raj Menon, e.g. on Monday. He is kind.",
            ["Ask Dr. Raj Menon, e.g. on Monday.", "He is kind."],
        ),
        ("## Fees\nThe fee is 5 pounds", ["## Fees", "The fee is 5 pounds"]),
        ("子猫の食事は1日4回です。成猫は1日2回です。", ["子猫の食事は1日4回です。", "成猫は1日2回です。"]),
        ("The mem-\nbership runs\nall year.", ["The membership runs all year."]),
    ],
)
def test_one_sentence_splitter(text: str, expected: list[str]) -> None:
    assert split_sentences(text) == expected


def test_unwrap_keeps_fenced_code_and_paragraph_breaks() -> None:
    text = "First line\nsecond line.\n\n```\ncode  line\n  indented\n```\nAfter."
    assert unwrap(text) == "First line second line.\n\n```\ncode  line\n  indented\n```\nAfter."
