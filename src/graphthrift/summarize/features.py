"""What makes a chat sentence worth keeping: the facts and decisions it states.

Word lists and patterns for dates, money, identifiers, quoted strings and decisions; the
score of a sentence; pleasantries (filler) and the telegraphic rewrite that drops words
carrying no fact. Used by ``ExtractiveSummarizer``'s ``"sentences"`` style and its gists.
"""

from __future__ import annotations

import re
from functools import lru_cache

from graphthrift.summarize.fields import IDENT, tool_fields
from graphthrift.summarize.transcript import tool_call_text
from graphthrift.text.lexical import DIGIT, word_set
from graphthrift.text.messages import Message
from graphthrift.text.sentences import split_chat_sentences

__all__ = [
    "IDENT",
    "OPENERS",
    "clean_sentence",
    "is_filler",
    "sentence_features",
    "sentences_of",
]

_WORD = re.compile(r"[\w$€£@#'./:-]+")
_DATE = re.compile(
    r"\b(?:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?|"
    r"sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?|monday|tuesday|wednesday|"
    r"thursday|friday|saturday|sunday|today|tomorrow|tonight|yesterday|weekend|noon|midnight|"
    r"morning|afternoon|evening|next week|this week|o'clock|\d+(?:st|nd|rd|th))\b",
    re.IGNORECASE,
)
_MONEY = re.compile(r"[$€£¥]|\b(?:dollars?|euros?|pounds?|usd|eur|gbp|price|cost|fee)\b", re.I)
_QUOTED = re.compile(r"\"[^\"]{2,}\"|“[^”]{2,}”")
_DECISION = re.compile(
    r"\b(?:decid\w*|agree\w*|chose|choose|confirm\w*|book\w*|reserv\w*|schedul\w*|cancel\w*|"
    r"prefer\w*|want\w*|need\w*|will|won't|let's|plan\w*|must|should|deadline|instead|"
    r"final\w*|approv\w*|select\w*|buy|order\w*|pay\w*|address|located|rating|only|not|never)\b",
    re.IGNORECASE,
)


_LEADING_FILLER = re.compile(
    r"^(?:(?:ok(?:ay)?|sure(?: thing)?|yes|yeah|yep|alright|all right|great|perfect|cool|"
    r"well|so|hi|hello|hey|thanks|thank you(?: so much| very much)?|awesome|nice|oh|"
    r"absolutely|certainly|of course|no problem)\b[\s,.!]*)+",
    re.IGNORECASE,
)
_FILLER_WORDS = word_set(
    "ok okay sure yes yeah yep no nope alright all right great perfect cool well so hi "
    "hello hey thanks thank you very much a lot awesome nice oh good bye goodbye have day "
    "that's that is it sounds fine wonderful excellent lol haha anything else can i help "
    "with something for today appreciate really indeed too me please correct true exactly"
)
_PROPER_SKIP = frozenset({"I", "I'm", "I'll", "I'd", "I've", "OK", "Okay"})
# A capitalised first word is a name unless it is one of these common sentence openers.
OPENERS = word_set(
    "a about add after all also an and any anything are as at be book but by can cancel "
    "confirm check could did do does done find for from get give go great had has have "
    "hello help hey hi how i i'd i'll i'm i've if in is it it's just keep let let's look "
    "make maybe move like my need no not now of ok okay on one only or our perfect pick "
    "please put reserve send set shall should show so some sounds sure tell thank thanks "
    "that that's the then there these they this those to try unfortunately want was we "
    "we'd we'll we're well were what when where which who why will with would yeah yes "
    "you you're your"
)
# Words that carry no fact: dropped from kept sentences ("telegraphic" style), unless they
# sit inside a fact ("6 am", "11th of this month") or are written as part of a name.
_LOW_INFO = word_set(
    "i me my mine you your yours we us our it its they them their he him his she her this "
    "that these those there here is are was were be been being am do does did would could "
    "can will shall should may might have has had i'm i'd i'll i've you're you'd you'll "
    "you've we're we'd we'll it's that's there's they're please kindly just also really "
    "actually very so well okay ok oh um sure"
)
_TIME_WORDS = word_set("month week weekend year day morning afternoon evening night noon time date")


@lru_cache(maxsize=65536)
def sentence_features(text: str) -> tuple[float, frozenset[str]]:
    """Score a sentence by the facts and decisions it carries; return its fact keys."""
    words = _WORD.findall(text)
    facts: set[str] = set()
    score = 0.0
    for i, w in enumerate(words):
        bare = w.strip(".:'-")
        if not bare:
            continue
        if (
            DIGIT.search(bare)
            or (
                bare[0].isupper()
                and bare not in _PROPER_SKIP
                and (i > 0 or bare.lower() not in OPENERS)
            )
            or (len(bare) > 1 and bare.isupper() and bare not in _PROPER_SKIP)
        ):
            facts.add(bare.lower())
    facts.update(m.group(0).lower() for m in _DATE.finditer(text))
    facts.update(m.group(0).lower() for m in IDENT.finditer(text))
    facts.update(m.group(0).lower() for m in _QUOTED.finditer(text))
    score += 2.0 * min(len(facts), 6)
    score += 1.0 * bool(_MONEY.search(text))
    score += 1.5 * min(len(_DECISION.findall(text)), 2)
    return score, frozenset(facts)


def is_filler(text: str) -> bool:
    words = [w.strip(".,!?;:'\"").lower() for w in text.split()]
    return all(not w or w in _FILLER_WORDS for w in words)


def _telegraphic(sentence: str) -> str:
    """Drop the words that carry no fact, keeping those inside facts and names."""
    words = sentence.split()
    kept: list[str] = []
    for i, word in enumerate(words):
        bare = word.strip('.,!?;:"()')
        low = bare.lower()
        if (
            low in _LOW_INFO
            and not (bare.isupper() and len(bare) > 1)
            and (i == 0 or bare in (low, "I"))
        ):
            nxt = words[i + 1].strip('.,!?;:"()').lower() if i + 1 < len(words) else ""
            prev = words[i - 1] if i else ""
            if not (DIGIT.search(prev) or DIGIT.search(nxt) or nxt in _TIME_WORDS):
                if word[-1:] in ".,!?;:" and kept:
                    kept[-1] = kept[-1].rstrip(".,!?;:") + word[-1]
                continue
        kept.append(word)
    text = " ".join(kept).strip(" ,;:")
    return text[:1].upper() + text[1:] if text else ""


def clean_sentence(sentence: str, telegraphic: bool) -> str:
    stripped = _LEADING_FILLER.sub("", sentence.strip()).strip()
    if telegraphic and stripped:
        stripped = _telegraphic(stripped)
    elif stripped and stripped != sentence.strip():
        stripped = stripped[0].upper() + stripped[1:]
    return stripped


def sentences_of(message: Message) -> list[str]:
    text = message.text.strip()
    if message.role == "tool":
        fields, rest = tool_fields(text)
        if fields:
            parts = [p for p in split_chat_sentences(rest) if p and p.strip(" ,;|\n:")]
            return [*(f.text for f in fields), *parts]
    parts = [p for p in split_chat_sentences(text) if p and p.strip()]
    tool_calls = tool_call_text(message)
    return [*parts, tool_calls] if tool_calls else parts
