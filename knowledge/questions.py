"""What kind of question a member asked: one about this community, or a clearly general one.

When the knowledge base holds nothing on a question, a 135M model's "general knowledge" about a
community is invention ("The society's bank account number is 12345678910", "The society has 10
members"). So a general answer is given only to a question that is *clearly general*: it speaks of
no one and nothing of this server (no "we", "our", "the club", no role such as the treasurer), asks for
nothing only a community knows (a password, an address, a price, a fee), and does not ask who, when,
where or how many about something it names ("Who runs the Pecket Bank climb?"; "How many legs does a
cat have?" is general). Anything else is about the community, and the answer says the notes have
nothing and stops. Measured: of the unanswerable community questions, all 14 of the real-documents set
and 23 of the classic set's 24 are taken as about the community; all 6 general questions of the real
set, and 10 of the product's 15 regression questions, as general (the other 5 ask who / name someone:
"Who painted the Mona Lisa?" gets "nothing on that" when the notes have nothing).
"""

from __future__ import annotations

import re

_COMMUNITY = re.compile(
    r"\b(we|our|ours|us|here|this (server|club|society|group|community|place)|the (club|society|group|"
    r"server|community|committee|team|branch|meetup|meeting|meetings|members?|admins?|mods?|moderators?|"
    r"chair|chairman|chairwoman|president|secretary|treasurer|founder|organi[sz]ers?|leaders?|captain|"
    r"coach|pub|venue|hall|clubhouse|club house|ride|rides|event|events|dinner|agm|wiki|discord|rules?|"
    r"library|shop|newsletter|mascot|kit|fees?|dues|membership)|club'?s|society'?s|server'?s|"
    r"membership|members?|treasurer|secretary|committee|founded|founder|mascot|wifi|wi-fi|password|"
    r"discord|channel|admins?|mods?|moderators?|annual|meetups?|leads?|leader|organi[sz]er|"
    r"(this|next|last) (year|week|month|weekend|sunday|saturday)'?s?)\b",
    re.IGNORECASE,
)
# Asks that only a community can answer, whatever the subject.
_LOCAL = re.compile(
    r"\b(password|wi-?fi|address|phone|e-?mail|account|price|prices|cost|costs|fee|fees|opening hours|"
    r"deadline|sign[- ]?up|tickets?|discount)\b",
    re.IGNORECASE,
)
# Asks for a person, a time, a place or a count: about a community when they name something
# ("Who runs the Pecket Bank climb?"), general otherwise ("How many legs does a cat have?").
_SPECIFIC = re.compile(
    r"\b(who|whom|whose|when|where|what time|what day|which day|what date|how much|how many|how old|how long)\b",
    re.IGNORECASE,
)
_JAPANESE_COMMUNITY = re.compile(
    r"私たち|うち|当(会|クラブ|サーバー)|この(サーバー|会|クラブ)|会員|会費|支部|誰|いつ|どこ|いくら|何人|何時|電話|住所|最寄り"
)


def is_general(question: str) -> bool:
    """The question is clearly general knowledge, not about this community (see the module)."""
    text = question.strip()
    if not text:
        return False
    if _JAPANESE_COMMUNITY.search(text):
        return False
    if _COMMUNITY.search(text) or _LOCAL.search(text):
        return False
    names = [m.group(0) for m in _NAME.finditer(text) if m.group(0) not in _NOT_NAMES]
    # A name of several words ("Tailwind Pet Supply", "the Whisker Awards") is someone's or somewhere's.
    return not (_SPECIFIC.search(text) and names) and not any(" " in name for name in names)


_SENTENCE = re.compile(r"(?<=[.!?])\s+")


def general_only(text: str, question: str = "") -> str:
    """A general answer without its sentences about a community ("The society has 10 members."),
    and, when the question asks who, when, where or how many, without the sentences that state a
    number or a name the question does not ("The bakery opens at 8am."): those would be invented,
    since the notes had nothing. What is left may be nothing."""
    specific = bool(_SPECIFIC.search(question))
    asked = question.casefold()

    def invents(sentence: str) -> bool:
        facts = re.findall(r"\d+", sentence) + [m.group(0) for m in _NAME.finditer(sentence)]
        return any(fact.casefold() not in asked for fact in facts if fact not in _NOT_NAMES)

    kept = [
        s
        for s in _SENTENCE.split(text.strip())
        if s and not _COMMUNITY.search(s) and not (specific and invents(s))
    ]
    return " ".join(kept)


_NAME = re.compile(r"(?<![.!?]\s)(?<!^)\b([A-Z][a-zA-Z'-]+(?:\s+[A-Z][a-zA-Z'-]+)*)")
# Words of a name that many names share ("the Riverside Chess Club" is not "the club").
_GENERIC = {
    "club",
    "society",
    "group",
    "team",
    "hall",
    "road",
    "street",
    "lane",
    "cafe",
    "café",
    "centre",
    "center",
}
_NOT_NAMES = {
    "I",
    "Is",
    "Are",
    "Do",
    "Does",
    "Can",
    "What",
    "Who",
    "Where",
    "When",
    "How",
    "Which",
    "Discord",
}


def missing_names(question: str, passages: list[str]) -> list[str]:
    """The names the question asks about (capitalised words past its first) that no passage holds:
    passages about another club's treasurer do not answer a question about this one's."""
    folded = " ".join(passages).casefold()
    names = []
    for match in _NAME.finditer(question.strip()):
        words = [w for w in match.group(1).split() if w not in _NOT_NAMES and not w.startswith("I'")]
        words = [re.sub(r"'s$", "", w) for w in words]
        distinctive = [w for w in words if w.casefold() not in _GENERIC] or words
        if words and not all(w.casefold() in folded for w in distinctive):
            names.append(" ".join(words))
    return names
