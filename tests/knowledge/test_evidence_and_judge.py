"""Grounding helpers (knowledge/evidence.py) and the answer-quality judge (knowledge/quality.py)."""

from __future__ import annotations

from adapters.prompt import (
    CLOSEST_NOTE,
    GENERAL_KNOWLEDGE,
    NOTHING_FOUND,
    TAUGHT,
    compose_answer,
    finish_answer,
)
from knowledge.evidence import (
    is_grounded,
    is_non_answer,
    passage_scores,
    repeats_question,
    sentences,
    ungrounded,
)
from knowledge.quality import echoes_markup, has_key, own_words, says_nothing_found
from knowledge.quoting import best_sentences

PASSAGE = (
    "## Monthly meetup\nThe monthly meetup is on the second Saturday, 2:00 pm to 5:00 pm.\n"
    "The upstairs room holds 44 people. Entry is free for patrons."
)


def test_sentences_leave_out_headings_and_keep_facts() -> None:
    assert sentences(PASSAGE) == [
        "The monthly meetup is on the second Saturday, 2:00 pm to 5:00 pm.",
        "The upstairs room holds 44 people.",
        "Entry is free for patrons.",
    ]
    assert sentences("ADOPTION FEES\n■ 子猫の食事は1日4回です。") == ["子猫の食事は1日4回です。"]
    # An accepted correction's post: its answer is evidence, its question is not.
    post = "Question: Who is the treasurer?\nAnswer: The treasurer is Odile Brandt."
    assert sentences(post) == ["The treasurer is Odile Brandt."]


def test_best_sentences_match_the_question_in_any_script() -> None:
    question = "How many people fit in the upstairs room?"
    assert best_sentences(question, [PASSAGE], count=1) == "The upstairs room holds 44 people."
    two = best_sentences(question, [PASSAGE])  # the best two, in passage order
    assert two is not None and "holds 44 people." in two and two.count(".") >= 2
    ja = "■ 食事\n子猫の食事は1日4回です。成猫は1日2回です。トイレは毎日掃除します。"
    assert best_sentences("子猫の食事は何回？", [ja], count=1) == "子猫の食事は1日4回です。"
    assert best_sentences("anything", []) is None


def test_an_answer_that_invents_a_number_or_name_is_not_grounded() -> None:
    assert is_grounded("The upstairs room holds 44 people.", PASSAGE)
    assert ungrounded("The room holds 60 people, says Harriet Menon.", PASSAGE) == ["60", "Harriet", "Menon"]
    assert not is_grounded("The room holds 60 people.", PASSAGE)
    assert not is_grounded(
        "The room is wheelchair accessible with a lift.", PASSAGE
    )  # words not in the notes
    ja = "東京支部の年会費は3,000円です。"
    assert is_grounded("年会費は3,000円です。", ja)
    assert not is_grounded("これは、バジューバルのバジューバルのバジューバル", ja)
    assert is_non_answer("I'm sorry for the confusion, as a chatbot I cannot help.")
    assert not is_non_answer("The answer is: 44 people.")


def test_the_answer_wording_and_the_judge_agree() -> None:
    room = "The upstairs room holds 44 people."
    where = "rooms.md › Upstairs"
    text = finish_answer("It holds 44 people. More text. Even more.", max_sentences=1)
    grounded = compose_answer(text, kind="notes", quote=room, quote_answers=True, where=where)
    assert grounded == f"It holds 44 people.\n> “{room}” ({where})"
    assert own_words(grounded) == "It holds 44 people." and has_key(grounded, ["44"])
    # The model's sentence is not grounded but the notes answer: the notes, plainly, no hedge.
    plain = compose_answer(
        "It holds 60.", kind="notes", quote=room, quote_answers=True, where=where, grounded=False
    )
    assert plain == f"The notes ({where}) say: “{room}”"
    assert own_words(plain) == "" and not says_nothing_found(plain) and "60" not in plain
    # Only close: the hedge stays.
    replaced = compose_answer("It holds 60.", kind="notes", quote=room, where=where, grounded=False)
    assert replaced.startswith(CLOSEST_NOTE) and own_words(replaced) == "" and says_nothing_found(replaced)
    nothing = compose_answer("Mochi is a mythological creature.", kind="nothing")
    assert nothing.startswith(NOTHING_FOUND) and says_nothing_found(nothing) and "Mochi" not in nothing
    general = compose_answer("Boil it for ten minutes.", kind="general")
    assert general.startswith(NOTHING_FOUND) and GENERAL_KNOWLEDGE in general and "ten minutes" in general
    taught = compose_answer("Pickles is the mascot.", kind="taught")
    assert taught == f"{TAUGHT} Pickles is the mascot." and not says_nothing_found(taught)
    assert not says_nothing_found("The meetup is on Saturday.")
    assert echoes_markup("1. [1] (kb/meetings.md) # Whisker Club meetings") and echoes_markup("Context: ...")
    assert not echoes_markup("The meetup is on the second Saturday [1].")


def test_the_quoted_sentence_is_the_kind_the_question_asks_for() -> None:
    clinic = (
        "Hollybank is a general practice at 42 Station Road, Brambleford. It opened its cat ward in 2023. "
        "You can phone Hollybank on 555-0142 from 8 am. Two of its vets know the club well: Dr. Raj Menon "
        "runs the Ask a Vet sessions."
    )
    assert "555-0142" in (best_sentences("what's hollybank's phone number?", [clinic], count=1) or "")
    # The words match the address; the question asks for a number.
    room = "The meetup room is upstairs at the Copper Kettle café. Up to 44 can come."
    assert (
        best_sentences("How many fit in the meetup room upstairs?", [room], count=1) == "Up to 44 can come."
    )
    assert best_sentences(
        "誰がチェックしましたか？", ["このガイドは毎月チェックしています。高橋先生が確認しました。"], count=1
    ) == ("高橋先生が確認しました。")
    # "Dr." does not end a sentence: the name stays with it.
    assert best_sentences("Who does the Ask a Vet sessions?", [clinic], count=1) == (
        "Two of its vets know the club well: Dr. Raj Menon runs the Ask a Vet sessions."
    )


def test_a_looping_answer_is_cut_after_its_first_round() -> None:
    assert finish_answer("BORROWING RULES - 10 days - 10 days - 10 days - 10") == "BORROWING RULES - 10 days"
    assert finish_answer("The Purrsuit  The Purrsuit  The Purrsuit  The Pu") == "The Purrsuit"
    assert finish_answer("トラブルやトラブルやトラブルやトラブ") == "トラブルや"
    # Repeated digits and ordinary sentences are not loops.
    for text in ("The fund holds 1000000 dollars...", "Entry is free. Entry is free for patrons, too."):
        assert finish_answer(text) == text


def test_an_answer_that_restates_the_question_is_no_answer() -> None:
    question = "When can I pick something up from the lending library?"
    assert repeats_question(f'The answer is: "{question}"', question)
    assert repeats_question(
        "これは、東京だと、どこで？ The answer is", "夜中に猫の具合が悪くなったら、東京だとどこに行けばいい？"
    )
    assert not repeats_question("The lending library is open on Tuesdays and Saturdays.", question)
    assert not repeats_question("東京支部の年会費は3,000円です。", "東京支部の年会費はいくら？")


def test_the_kind_of_number_asked_for_counts() -> None:
    """A length of time, a price, a share: a sentence with any number is not enough."""
    lent = "You can borrow up to two items at a time. Equipment is lent for two weeks."
    assert (
        best_sentences("How long can I keep a carrier?", [lent], count=1)
        == "Equipment is lent for two weeks."
    )
    fees = "The stroller is one of 3 in the library. Each item needs a $20 deposit."
    assert (
        best_sentences("Is there a deposit for the stroller?", [fees], count=1)
        == "Each item needs a $20 deposit."
    )
    share = "The fund was set up in 2019 by 12 members. It gets 45% of the membership fees."
    assert best_sentences("What share of the fees goes to the fund?", [share], count=1) == (
        "It gets 45% of the membership fees."
    )


def test_a_passage_scores_as_its_best_sentence() -> None:
    room = "The room is upstairs. It holds 44 people."
    about = "The room is upstairs at the café. The room has a piano."
    scores = passage_scores("How many people fit in the room?", [about, room, "# Heading only"])
    assert scores[1] > scores[0] > scores[2] == 0.0
