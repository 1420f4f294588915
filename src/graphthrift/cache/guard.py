"""The lexical guard: a semantic hit must not change the question's numbers, names or polarity.

Embeddings place "Is the store open on Monday?" and "... on Sunday?" at cosine 0.93, and
"I can log in" next to "I cannot log in" (GPTCache #694): the words that decide the answer
are few and short, so they barely move the vector. This guard compares those words
directly and rejects a semantic hit when the cached question and the new one differ in

- numbers (``2``, ``3.5``, ``2³``) and their units ("30 days" / "30 weeks" / "30 business
  days"), identifiers (``A-101``, ``SKU42``, ``IBAN``),
- dates: weekdays, months, relative days (today, tomorrow, ...),
- opposite words (before / after, within / after, to / from, higher / lower, in / out,
  deposit / withdraw, safe / unsafe, ...),
- negation (not, no, never, n't, without, ...), when the rest of the two questions is
  nearly the same ("I can log in" / "I cannot log in"; but "When will my card arrive?" and
  "My card has not arrived yet" ask the same thing),
- named entities swapped for others (capitalised words that do not start a sentence, and
  acronyms, present in each question and absent from the other).

It is cheap (a few regular expressions per hit) and lexical, so it only ever turns a hit
into a miss: it can cost recall, never precision. ``SemanticCache(lexical_guard=False)``
turns it off. Its effect on banking77 and stsb is measured by ``graphthrift bench cache``
and shown by ``graphthrift cache tune``.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable

__all__ = ["Guard", "lexical_conflict"]

Guard = Callable[[str, str], "str | None"]

_NUMBER = re.compile(r"[0-9⁰¹²³⁴⁵⁶⁷⁸⁹½¼¾⅓⅔]+(?:[.,][0-9]+)*")
_WORD = re.compile(r"[^\W_]+(?:[-'’][^\W_]+)*")
_IDENT = re.compile(
    r"\b(?=[A-Za-z0-9-]*[0-9])(?=[A-Za-z0-9-]*[A-Za-z])[A-Za-z0-9]+(?:-[A-Za-z0-9]+)*\b"
)
_ACRONYM = re.compile(r"\b[A-Z]{2,}[0-9]*\b")
_UNIT = re.compile(r"(?:[ \t]+|-)([^\W\d_]+)")
_WEEKDAYS = {
    "monday": "mon", "mon": "mon", "tuesday": "tue", "tue": "tue", "tues": "tue",
    "wednesday": "wed", "wed": "wed", "thursday": "thu", "thu": "thu", "thurs": "thu",
    "friday": "fri", "fri": "fri", "saturday": "sat", "sunday": "sun",
    "weekday": "weekday", "weekdays": "weekday", "weekend": "weekend", "weekends": "weekend",
}  # fmt: skip
_MONTHS = {
    "january": "jan", "jan": "jan", "february": "feb", "feb": "feb", "april": "apr",
    "june": "jun", "july": "jul", "august": "aug", "aug": "aug", "september": "sep",
    "sept": "sep", "october": "oct", "oct": "oct", "november": "nov", "nov": "nov",
    "december": "dec", "dec": "dec", "march": "mar",
}  # fmt: skip
_RELATIVE = {
    "today": "today", "tonight": "today", "tomorrow": "tomorrow", "yesterday": "yesterday",
    "morning": "morning", "afternoon": "afternoon", "evening": "evening", "night": "night",
}  # fmt: skip
_NEGATIONS = frozenset(
    {
        "not", "no", "never", "none", "nobody", "nothing", "nowhere", "neither", "nor",
        "without", "cannot", "cant", "won't", "dont", "doesnt", "didnt", "isnt", "arent",
        "wasnt", "werent", "havent", "hasnt", "hadnt", "wont", "wouldnt", "shouldnt",
        "couldnt", "mustnt", "unable",
    }
)  # fmt: skip
_NOT_ENTITIES = frozenset(
    {
        "i", "i'm", "i've", "i'd", "i'll", "a", "an", "the", "is", "are", "was", "can", "could",
        "do", "does", "did", "how", "what", "when", "where", "why", "who", "which", "will",
        "would", "should", "my", "your", "please", "hi", "hello", "thanks", "ok", "okay", "yes",
    }
)  # fmt: skip
_SENTENCE_END = frozenset(".!?:;\n")
_STOPWORDS = frozenset(
    {
        "a", "an", "the", "i", "me", "my", "you", "your", "we", "our", "it", "is", "are", "was",
        "were", "be", "been", "do", "does", "did", "can", "could", "will", "would", "should",
        "to", "of", "in", "on", "at", "for", "with", "and", "or", "this", "that", "has", "have",
        "had", "yet", "still", "please", "why", "how", "what", "when", "where", "who", "which",
    }
)  # fmt: skip
#: Share of content words two questions must have in common for a negation to matter.
_NEGATION_OVERLAP = 0.6


def _fold(text: str) -> str:
    return unicodedata.normalize("NFC", text).replace("’", "'")


def _numbers(text: str) -> frozenset[str]:
    return frozenset(n.replace(",", "") for n in _NUMBER.findall(text))


def _units(text: str) -> list[tuple[str, str]]:
    """Each number with the word right after it, its unit ("30 days", "30-day", "30 business
    days" -> business), crudely stemmed; '' when none follows. Sorted, so order is free."""
    out = []
    for match in _NUMBER.finditer(text):
        if match.start() and text[match.start() - 1].isalnum():
            continue  # inside an identifier (SKU42): the identifiers' check
        after = _UNIT.match(text, match.end())
        unit = _stem(after.group(1).lower()) if after else ""
        out.append((match.group().replace(",", ""), unit))
    return sorted(out)


def _identifiers(text: str) -> frozenset[str]:
    return frozenset(m.upper() for m in _IDENT.findall(text))


def _words(text: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(text)]


def _dates(words: list[str]) -> frozenset[str]:
    out = set()
    for w in words:
        for table in (_WEEKDAYS, _MONTHS, _RELATIVE):
            if w in table:
                out.add(table[w])
    return frozenset(out)


def _is_negation(word: str) -> bool:
    return word.replace("'", "") in _NEGATIONS or word.endswith("n't")


def _negated(text: str, words: list[str]) -> bool:
    """Whether the text negates something. "not ... yet" (still waiting: "my card has not
    arrived yet") is not a negation of the question, so it does not count."""
    for i, word in enumerate(words):
        if _is_negation(word) and "yet" not in words[i + 1 : i + 5]:
            return True
    return False


def _stem(word: str) -> str:
    for suffix in ("ing", "ed", "es", "s", "e"):
        if len(word) > len(suffix) + 2 and word.endswith(suffix):
            return word[: -len(suffix)]
    return word


def _content(words: list[str]) -> set[str]:
    """Words that carry the question's content: no stopwords, no negations, crude stems."""
    out = set()
    for w in words:
        if w in _STOPWORDS or _is_negation(w):
            continue
        out.add(_stem(w))
    return out


def _same_content(wa: list[str], wb: list[str]) -> bool:
    a, b = _content(wa), _content(wb)
    if not a or not b:
        return True
    return len(a & b) / len(a | b) >= _NEGATION_OVERLAP


def _entities(text: str) -> frozenset[str]:
    """Acronyms, and capitalised words that do not start a sentence (lower-cased)."""
    out = {m.lower() for m in _ACRONYM.findall(text) if m != "OK"}
    for match in _WORD.finditer(text):
        word = match.group()
        if not word[0].isupper():
            continue
        before = text[: match.start()].rstrip()
        if not before or before[-1] in _SENTENCE_END or before[-1] in "\"'([":
            continue  # sentence start
        low = word.lower()
        if low not in _NOT_ENTITIES and low not in _WEEKDAYS and low not in _MONTHS:
            out.add(low)
    return frozenset(out)


# Words whose swap turns a question into its opposite ("ship before / after Christmas").
_OPPOSITES = {
    frozenset(pair)
    for pair in (
        ("before", "after"),
        ("above", "below"),
        ("over", "under"),
        ("more", "less"),
        ("most", "least"),
        ("increase", "decrease"),
        ("early", "late"),
        ("earlier", "later"),
        ("minimum", "maximum"),
        ("min", "max"),
        ("buy", "sell"),
        ("import", "export"),
        ("upload", "download"),
        ("upgrade", "downgrade"),
        ("enable", "disable"),
        ("add", "remove"),
        ("include", "exclude"),
        ("inside", "outside"),
        ("first", "last"),
        ("cheapest", "expensive"),
        ("cheaper", "dearer"),
        ("higher", "lower"),
        ("within", "after"),
        ("within", "beyond"),
        ("to", "from"),
        ("up", "down"),
        ("in", "out"),
        ("on", "off"),
        ("open", "close"),
        ("start", "stop"),
        ("send", "receive"),
        ("deposit", "withdraw"),
    )
}
_ANTONYM_PREFIXES = ("un", "in", "im", "dis", "non", "il", "ir")


def _opposed(wa: list[str], wb: list[str]) -> bool:
    """The questions differ by a pair of opposite words (before/after, safe/unsafe)."""
    only_a, only_b = set(wa) - set(wb), set(wb) - set(wa)
    for x in only_a:
        for y in only_b:
            if frozenset((x, y)) in _OPPOSITES:
                return True
            long, short = (x, y) if len(x) > len(y) else (y, x)
            if any(long == prefix + short for prefix in _ANTONYM_PREFIXES):
                return True
    return False


def lexical_conflict(cached: str, query: str) -> str | None:
    """Why serving ``cached``'s answer for ``query`` could change the meaning, or None.

    Returns ``"numbers"``, ``"units"``, ``"identifiers"``, ``"dates"``, ``"negation"``,
    ``"opposites"`` or ``"entities"``.

    Example:
        >>> lexical_conflict("Is the store open on Sunday?", "Is the store open on Monday?")
        'dates'
        >>> lexical_conflict("How do I reset my password?", "how can I reset my password") is None
        True
    """
    a, b = _fold(cached), _fold(query)
    if _numbers(a) != _numbers(b):
        return "numbers"
    if _units(a) != _units(b):
        return "units"
    if _identifiers(a) != _identifiers(b):
        return "identifiers"
    wa, wb = _words(a), _words(b)
    if _dates(wa) != _dates(wb):
        return "dates"
    if _negated(a, wa) != _negated(b, wb) and _same_content(wa, wb):
        return "negation"
    if _opposed(wa, wb):
        return "opposites"
    # a named entity swapped for another (Paris / London); one question naming more than
    # the other ("an Amtrak train" / "a train") is a narrower question, not another one
    ea, eb = _entities(a), _entities(b)
    if ea - set(wb) and eb - set(wa):
        return "entities"
    return None
