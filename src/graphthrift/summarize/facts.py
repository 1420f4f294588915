"""Fact spans: the exact slices of a message that state a value a later turn may need.

Names, titles, numbers, times, dates, money, addresses, ids: runs of value words with the
joiners names contain, a time suffix or unit word, and a leading "from"/"to"/"the"/"next";
plus what a naming cue introduces ("an alarm called leave for home"). Each span keeps its
kind, so a later value of the same kind supersedes it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from graphthrift.summarize.features import OPENERS
from graphthrift.text.lexical import DIGIT, RAW_TOKEN, word_set

__all__ = ["NO_WORDS", "YES_WORDS", "Span", "bare_word", "fact_spans"]

_WORD_EDGE = "\"'()[]{}“”‘’*"
_END_PUNCT = ".,!?;"
_ABBREVIATION = re.compile(r"^(?:[A-Z]|Dr|Mr|Ms|Mrs|St|Jr|Sr|Ave|Blvd|Rd|Ln|Mt|No|vs|Inc|Co)\.$")
_NAMED_DATES = word_set(
    "january february march april may june july august september october november december "
    "jan feb mar apr jun jul aug sep sept oct nov dec monday tuesday wednesday thursday "
    "friday saturday sunday today tomorrow tonight yesterday noon midnight"
)
_TIME_SUFFIX = word_set("am pm a.m. p.m. am. pm. o'clock")
# Lower-case words that may sit inside a name ("Close Encounters of the Third Kind").
_NAME_JOINERS = word_set(
    "of the a an and & de del der la le du von van da di y on in at for to is by # - n'"
)
_I_FORMS = word_set("I I'm I'll I'd I've")
_DATE_LEADS = word_set("the next this last")
_CLOCK_LEADS = ("quarter past", "half past", "quarter to")
_DAY_PARTS = re.compile(
    r"\s+(?:in the (?:morning|afternoon|evening|night)|(?:next|this) (?:week|month|year)|"
    r"of (?:this|next|the) month|(?:morning|afternoon|evening|night|tonight|today|tomorrow))\b",
    re.I,
)
# A preposition right before a value says which value it is ("from SFO to LAX").
_LEADS = word_set("from to until till before after between")
# Openers and pronouns that a capital letter does not make a name.
_NOT_NAMES = OPENERS | word_set(
    "its here there their they she he his her him them your yours you our ours we us me "
    "what whats what's which who whom whose where when why how is are was were am be been "
    "would could should will shall can may might must do does did has have had please "
    "enjoy confirming booking searching finding there's here's sorry unfortunately yes no "
    "okay ok alright sure great cool nice perfect thanks thank hello hi hey bye goodbye "
    "good excellent wonderful awesome fine right correct also additionally however "
    "i i'm i'll i'd i've you'll you're you've you'd we're we'll we've it's that's"
)
_NUMBER_WORDS = word_set(
    "two three four five six seven eight nine ten eleven twelve fifteen twenty thirty "
    "forty fifty sixty hundred"
)
_NO_UNIT = (
    _NOT_NAMES
    | _NAME_JOINERS
    | word_set(
        "a an or but to from for with by as than then and is are per each every more less out"
    )
)
YES_WORDS = word_set("yes yeah yep yup sure correct ok okay absolutely definitely right")
NO_WORDS = word_set("no nope nah")
_KIND_TIME = re.compile(r"^(?:\d{1,2}(?::\d\d)?\s*(?:am|pm|a\.m\.|p\.m\.)|noon|midnight)$", re.I)
_KIND_MONEY = re.compile(r"[$€£¥]")
# "called X", "named X", "titled X", "with the name X": X runs to the clause's end, 1-6 words
_NAMED_AFTER = re.compile(
    r"\b(?:named|called|titled|entitled|labell?ed|with (?:the )?(?:name|title|label))\s+"
    r"(?!(?:a|an|the|it|me|you|him|her|them|us|for|to|in|on|at|by)\b)"
    r"([^\s.,!?;:()\"]+(?: (?!and\b|but\b|which\b|who\b|that\b)[^\s.,!?;:()\"]+){0,5})",
    re.I,
)


@dataclass(frozen=True, slots=True)
class Span:
    """A fact-bearing span of a message: an exact slice of its text."""

    start: int
    end: int
    text: str
    kind: str  # time, date, money, number or name: what a later value of it supersedes


def bare_word(word: str) -> str:
    return word.strip(_WORD_EDGE).rstrip(_END_PUNCT + ":").strip(_WORD_EDGE)


def _span_kind(text: str, lead: str) -> str:
    low = text.lower()
    body = low[len(lead) + 1 :] if lead else low
    if _KIND_TIME.match(body):
        return f"time{lead}"
    if _KIND_MONEY.search(body):
        return f"money{lead}"
    if any(w.strip(".,") in _NAMED_DATES for w in body.split()) or re.search(
        r"\b\d{1,2}(?:st|nd|rd|th)\b|\b\d{1,2}/\d{1,2}\b", body
    ):
        return f"date{lead}"
    if DIGIT.search(body):
        return f"number{lead}"
    return f"name{lead}"


@lru_cache(maxsize=65536)
def fact_spans(text: str) -> tuple[Span, ...]:
    """The spans of ``text`` that state facts, each an exact slice of it.

    A span is a run of value words (anything with a digit, a currency sign, an @, a
    month or weekday, or a capital that is not a sentence opener), with the lower-case
    joiners that names contain ("of the") when a value word follows them, a time suffix
    ("pm") or one unit word ("2 people") after a number, and a leading "from"/"to".
    Spans stop at a comma or a sentence end, so a value is never merged with the next.
    """
    words = [(m.start(), m.end(), m.group(0)) for m in RAW_TOKEN.finditer(text)]
    n = len(words)
    bare = [bare_word(w) for _, _, w in words]
    sentence_start = [True] * n
    breaks = [False] * n  # the span must end after this word
    comma = [False] * n  # ... unless only a comma ends it and a value follows (an address)
    for i, (_, _, raw) in enumerate(words):
        tail = raw.rstrip(_WORD_EDGE)
        ends = tail[-1:] in _END_PUNCT and not _ABBREVIATION.match(tail.lstrip(_WORD_EDGE))
        breaks[i] = bool(ends) or tail.endswith(("...", "…"))
        comma[i] = tail.endswith(",")
        if i + 1 < n:
            sentence_start[i + 1] = bool(ends and tail[-1:] in ".!?")
    strong = [False] * n
    for i, b in enumerate(bare):
        if not b:
            continue
        low = b.lower()
        if (
            DIGIT.search(b)
            or _KIND_MONEY.search(b)
            or "@" in b
            or low.startswith("http")
            or low in _NUMBER_WORDS
        ):
            strong[i] = True
        elif low in _NAMED_DATES and not (low == "may" and not b[0].isupper()):
            strong[i] = not (
                sentence_start[i]
                and low in ("may", "march")
                and i + 1 < n
                and not bare[i + 1][:1].isdigit()
            )
        elif b[0].isupper() and not sentence_start[i]:
            strong[i] = b not in _I_FORMS and low not in ("you", "your")
        elif b[0].isupper() and low not in _NOT_NAMES and i + 1 < n and not breaks[i]:
            # A capital opening a sentence makes a name only with a capital after it
            # ("Santa Rosa has ...", not "Search the archive").
            nxt = bare[i + 1]
            strong[i] = bool(nxt[:1].isupper() and nxt not in _I_FORMS)
        elif len(b) > 1 and b.isupper() and low not in _NOT_NAMES:
            strong[i] = True
    spans: list[Span] = []
    i = 0
    while i < n:
        if not strong[i]:
            i += 1
            continue
        first = last = i
        j = i
        while j + 1 < n and (not breaks[j] or (comma[j] and strong[j + 1])):
            nxt = bare[j + 1]
            low = nxt.lower()
            if strong[j + 1]:
                j += 1
                last = j
                continue
            if low in _TIME_SUFFIX and DIGIT.search(bare[j]):
                j += 1
                last = j
                continue
            if low in _NAME_JOINERS or words[j + 1][2] in ("#", "-", "&"):
                k = j + 1
                while (
                    k < n
                    and not breaks[k]
                    and not strong[k]
                    and (bare[k].lower() in _NAME_JOINERS or words[k][2] in ("#", "-", "&"))
                ):
                    k += 1
                if k < n and strong[k] and not breaks[k - 1]:
                    j = k
                    last = k
                    continue
            break
        if (
            re.fullmatch(r"[$€£¥]?[\d.,:]+(?:st|nd|rd|th)?", bare[last])
            and not breaks[last]
            and last + 1 < n
            and bare[last + 1].isalpha()
            and bare[last + 1].islower()
            and bare[last + 1] not in _NO_UNIT
        ):
            last += 1  # "2 people", "10 miles", "1512 barber shop"
            if (
                not breaks[last]
                and last + 1 < n
                and bare[last + 1].isalpha()
                and bare[last + 1].islower()
                and bare[last + 1] not in _NO_UNIT
            ):
                last += 1
        lead = ""
        if first > 0 and not breaks[first - 1]:
            prev = bare[first - 1]
            if prev == "The" or (
                prev.lower() in _DATE_LEADS
                and (DIGIT.search(bare[first]) or bare[first].lower() in _NAMED_DATES)
            ):
                first -= 1  # "The Lord of the Rings", "the 2nd", "next Thursday"
        if first > 1 and DIGIT.search(bare[first]) and not breaks[first - 1]:
            pair = f"{bare[first - 2]} {bare[first - 1]}".lower()
            if pair in _CLOCK_LEADS and not breaks[first - 2]:
                first -= 2  # "quarter past 10"
        if first > 0 and not breaks[first - 1] and bare[first - 1].lower() in _LEADS:
            first -= 1
            lead = bare[first].lower()
        start = words[first][0] + (len(words[first][2]) - len(words[first][2].lstrip(_WORD_EDGE)))
        raw_last = words[last][2]
        end = words[last][0] + len(raw_last.rstrip(_WORD_EDGE))
        while (
            end > start
            and text[end - 1] in _END_PUNCT + ":"
            and not _ABBREVIATION.match(text[words[last][0] : end].lstrip(_WORD_EDGE))
        ):
            end -= 1
        while end > start and text[end - 1] in _WORD_EDGE:
            end -= 1
        if not breaks[last] or comma[last]:
            part = _DAY_PARTS.match(text, end)
            if part and (
                DIGIT.search(bare[last]) or bare[last].lower() in _NAMED_DATES | _NUMBER_WORDS
            ):
                end = part.end()  # "6 in the evening", "Friday next week"
                while last + 1 < n and words[last + 1][0] < end:
                    last += 1
        if "(" in text[start:end] and ")" not in text[start:end] and text[end : end + 1] == ")":
            end += 1
        piece = text[start:end]
        if piece:
            spans.append(Span(start, end, piece, _span_kind(piece, lead)))
        i = last + 1
    return _with_named(text, spans)


def _with_named(text: str, spans: list[Span]) -> tuple[Span, ...]:
    """Add what a naming cue introduces ("an alarm called leave for home"), capitals or not.

    A name given in lower case has no other mark, and it is exactly what a later turn
    refers back to. Spans inside a named one are dropped; the rest are kept in order.
    """
    for m in _NAMED_AFTER.finditer(text):
        start, end = m.span(1)
        if any(sp.start <= start and end <= sp.end for sp in spans):
            continue
        spans = [sp for sp in spans if not (start <= sp.start and sp.end <= end)]
        spans.append(Span(start, end, text[start:end], "name_given"))
    spans.sort(key=lambda sp: sp.start)
    return tuple(spans)
