"""What a member reads: a quote that answers (stated plainly) or is only close (hedged); what a
question is about; and the judge's invented-specifics and garbled-quote checks."""

from __future__ import annotations

from knowledge.quality import garbled_quote, invented_specifics, quoted_pieces
from knowledge.questions import general_only, is_general, missing_names
from knowledge.quoting import choose_quote, correction_answer, fact_answers

TREASURER = "## Treasurer\n\nGwen Adeyemi looks after the club's money. Pay your subs by bank transfer."
HILL = (
    "## Pecket Bank Hill Climb\n\nThe hill climb is 1.2 km long at an average gradient of 9%. "
    "The course record is 3 minutes 41 seconds, set by Sam Okoro in 2023."
)
DINNER = "## Annual dinner\n\nThe annual dinner is at Fellside Hall at 7pm for 7:30pm. Tickets are £32."


def test_a_sentence_under_its_heading_answers_a_short_question() -> None:
    quote = choose_quote("Who is the treasurer?", [DINNER, TREASURER])
    assert quote is not None and quote.answers and quote.passage == 1
    # The answering sentence first, with the next best of its section.
    assert quote.text == "Gwen Adeyemi looks after the club's money. Pay your subs by bank transfer."


def test_a_close_sentence_about_something_else_is_not_an_answer() -> None:
    record = choose_quote("What is the course record for the hill climb?", [HILL])
    assert record is not None and record.answers and "3 minutes 41" in record.text
    # Same shape, another subject: the women's record, the dinner's end, a kids' jersey.
    for question, passages in (
        ("What is the women's course record on the hill climb?", [HILL]),
        ("What time does the annual dinner finish?", [DINNER]),
        ("How many members does the club have?", [DINNER, HILL]),
    ):
        quote = choose_quote(question, passages)
        assert quote is not None and not quote.answers, question


def test_quotes_from_two_sections_stay_apart() -> None:
    quote = choose_quote("What is the bank account number?", [TREASURER, DINNER])
    assert quote is not None and not quote.answers
    assert " … " in quote.text or quote.text.count(".") <= 2


def test_an_accepted_correction_of_this_question_wins() -> None:
    post = "Question: What is the club mascot called?\nAnswer: Our mascot is a heron called Percy."
    assert (
        correction_answer("What is the club mascot called?", post, None)
        == "Our mascot is a heron called Percy."
    )
    assert correction_answer("Who is the treasurer?", post, None) is None
    quote = choose_quote("What is the club mascot called?", [DINNER, post])
    assert quote is not None and quote.answers and quote.text == "Our mascot is a heron called Percy."


def test_general_questions_and_community_questions() -> None:
    for general in ("How do I index my rear gears?", "What does a derailleur do?", "Why do cats purr?"):
        assert is_general(general), general
    for community in (
        "What is the club's bank account number?",
        "How many members does the society have?",
        "Who is the treasurer?",
        "When do we meet?",
        "What's the wifi password at the pub?",
        "Where are the meetings held?",
        "会費はいくらですか？",
    ):
        assert not is_general(community), community
    assert general_only("Index the gears with the barrel adjuster. The club has 10 members.") == (
        "Index the gears with the barrel adjuster."
    )
    # Who / when / where / how many: no number or name the question does not hold.
    assert general_only("It opens at 8am. Bread is baked daily.", "When does the bakery open?") == (
        "Bread is baked daily."
    )
    assert general_only("A cat has four legs.", "How many legs does a cat have?") == "A cat has four legs."


def test_a_question_about_someone_the_notes_do_not_name() -> None:
    assert missing_names("Who is the treasurer of the Riverside Chess Club?", [TREASURER]) == [
        "Riverside Chess Club"
    ]
    assert missing_names("Who writes for the Pecket Bank newsletter?", [HILL]) == []
    assert missing_names("Who is the treasurer?", [TREASURER]) == []


def test_the_judge_finds_invented_specifics_and_garbled_quotes() -> None:
    wiki = (
        "## Meetings\nWe meet in the back room of the Northbrook\nArms on Tuesdays.\n\n"
        "## Membership\nMembership costs 18 pounds a year.\n"
    )
    assert invented_specifics("The society has 10 members, says Bob.", wiki) == ["10", "Bob"]
    assert invented_specifics("Membership costs 18 pounds a year.", wiki) == []
    assert invented_specifics("This server's knowledge base has nothing on that.", wiki) == []
    assert not garbled_quote("We meet in the back room of the Northbrook Arms on Tuesdays.", [wiki])
    assert garbled_quote("We meet in the back room of the Northbrook", [wiki])  # stops mid-sentence
    assert garbled_quote("the Northbrook Membership costs 18 pounds a year.", [wiki])  # spans two sections
    assert quoted_pieces("The notes (wiki.md › Membership) say: “Membership costs 18 pounds. Pay Gwen.”") == [
        "Membership costs 18 pounds.",
        "Pay Gwen.",
    ]


def test_a_question_about_a_name_is_answered_only_by_a_sentence_about_it() -> None:
    calendar = (
        "## 2025 Calendar\n\n| Date | Event | Start point |\n|---|---|---|\n"
        "| Saturday 22 November | Annual dinner | Fellside Hall |"
    )
    hundred = "## Hospice Hundred\n\nRiders set off from the Harrowgate Leisure Centre between 8am and 9am."
    assert not choose_quote("Where does the Hospice Hundred start?", [calendar]).answers  # type: ignore[union-attr]
    quote = choose_quote("Where does the Hospice Hundred start?", [calendar, hundred])
    assert quote is not None and quote.answers and "Leisure Centre" in quote.text


def test_the_name_asked_about_must_be_in_the_answering_sentence() -> None:
    events = (
        "## Online events\n\nPurr Hour is our weekly voice chat, every Thursday at 8 pm.\n\n"
        "Dr. Raj Menon of Hollybank hosts Ask a Vet on the last Wednesday of each month."
    )
    quote = choose_quote("Who hosts Purr Hour?", [events])
    assert quote is not None and not quote.answers
    assert choose_quote("Who hosts Ask a Vet?", [events]).answers  # type: ignore[union-attr]


def test_a_japanese_quote_is_shown_as_the_closest_never_as_the_answer() -> None:
    faq = "## 東京支部\n\n代表は森 愛子さんで、現在のメンバーは約180人です。"
    quote = choose_quote("東京支部の副代表は誰ですか？", [faq])
    assert quote is not None and not quote.answers and quote.topical


def test_an_answering_quote_says_which_of_its_sentences_answer() -> None:
    committee = (
        "## Committee\n\n- Ride coordinator: Priya Lal, who writes the monthly ride-leader rota.\n"
        "- Club mechanic: Ollie Brennan, who runs the workshop."
    )
    quote = choose_quote("Who writes the ride-leader rota?", [committee])
    assert quote is not None and quote.answers and "Ollie Brennan" in quote.text
    assert "Priya Lal" in quote.answer and "Ollie Brennan" not in quote.answer


def test_a_taught_fact_answers_what_it_speaks_of_and_rewordings_that_name_nothing_else() -> None:
    taught, answer = "What is the wifi password of the club house?", "The wifi password is heron42."
    assert fact_answers("Which password gets me on the club house wifi?", answer, taught)
    assert not fact_answers("What is the wifi password of the library?", answer, taught)
    winner, contest = "A Maine Coon named Fennimore won it.", "Who won the 2023 longest whisker contest?"
    assert fact_answers("Who won the longest whisker contest in 2023?", winner, contest, reworded=True)
    assert not fact_answers("Who won the 2024 longest whisker contest?", winner, contest, reworded=True)
    assert not fact_answers("Who won the Zeltberg whisker contest?", winner, contest, reworded=True)
    # A scope written before answers were kept: its questions must hold what is asked about.
    assert fact_answers("Who baked the fair's cake?", "", "Who baked the cake for the fair?")
    assert not fact_answers("Who baked the bread for the fair?", "", "Who baked the cake for the fair?")
