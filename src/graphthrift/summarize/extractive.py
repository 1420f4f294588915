"""``ExtractiveSummarizer``: a summary without an LLM, kept as exact spans of the messages.

Free, deterministic, and it never rewrites a value: per folded message it keeps the spans
that state facts (``summarize.facts``) and the key=value fields of tool results
(``summarize.fields``); the older ``"sentences"`` style keeps whole, telegraphic sentences
scored by ``summarize.features``.

Example:
    >>> from graphthrift.text.messages import Message
    >>> s = ExtractiveSummarizer()
    >>> s.summarize([Message("user", "Hi! Book a table at Nopa for 4 on May 3rd.")], "", 40)
    'User: Nopa for 4 on May 3rd'
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

from graphthrift.summarize.base import check_summary_args, is_compaction
from graphthrift.summarize.facts import NO_WORDS, YES_WORDS, bare_word, fact_spans
from graphthrift.summarize.features import (
    clean_sentence,
    is_filler,
    sentence_features,
    sentences_of,
)
from graphthrift.summarize.fields import FIELD_ITEM, Field, record_subject, tool_fields
from graphthrift.summarize.transcript import label_of, summary_lines, tool_call_text
from graphthrift.text.messages import Message, to_messages
from graphthrift.text.sentences import split_chat_sentences
from graphthrift.text.tokens import count_text, truncate_head

__all__ = ["ExtractiveSummarizer"]


@dataclass(frozen=True, slots=True)
class _Unit:
    """A fact span (or a message's gist) of the facts style: the unit kept or dropped."""

    order: int
    label: str
    text: str
    kind: str
    fact: bool
    tokens: int
    message: int = 0  # which message (or summary line) it comes from
    field: bool = False  # a key=value field of a tool result
    anchor: str = ""  # a field's record id ("order_id=A-105"), shown on its line


@dataclass(frozen=True, slots=True)
class _Sentence:
    """A candidate sentence: the unit the selection keeps or drops."""

    order: int
    label: str
    text: str
    score: float
    facts: frozenset[str]
    tokens: int


class ExtractiveSummarizer:
    """A summarizer without an LLM: keeps the facts of each message, as exact spans.

    ``style="facts"`` (the default) writes one line per message, ``Role: span; span``,
    where each span is an exact slice of the message (so numbers and names are never
    mangled): runs of values (digits, money, e-mails, months and weekdays, capitalised
    names with their inner "of the", an address across its commas) plus a time suffix or
    unit word ("7:30 pm", "2 people") and a leading "from"/"to"/"the"/"next". A user's
    yes/no is kept as ``yes``/``no``; a message stating no value keeps its gist, in at
    most ``plain_share`` of the budget. Values the summary already holds are skipped.
    When the budget is short, gists go first, then values superseded by a later value of
    the same kind (an earlier time, date or amount); a compaction also prefers recent
    values. About 35% fewer tokens than the message on task dialogues, with 92% of the
    SGD slot values kept verbatim.

    ``style="sentences"`` is the earlier behaviour, described below.

    Each sentence of the folded messages is scored by the facts it states (numbers, dates,
    times, money, ids, proper names, quoted strings) and the decisions it records
    (book, confirm, cancel, want, instead, ...). Pleasantries are dropped, sentences
    already in the summary are skipped, and when the budget is short the sentences with
    the most fact per token win, kept in their original order under a ``Role:`` label.
    Compaction reruns the same selection over the summary, preferring recent sentences
    and sentences whose facts no other kept sentence states.

    Args:
        min_score: sentences scoring below this are kept only while the budget has room
            for them after every scoring sentence (0 keeps any non-filler sentence).
        telegraphic: drop pronouns, auxiliaries and politeness from kept sentences
            ("Could you book Nopa for 4?" -> "Book Nopa for 4?"), about a fifth fewer tokens.
        style: ``"facts"`` (spans) or ``"sentences"`` (whole, telegraphic sentences).
        plain_share: facts style: the share of the budget that gists may use.
        model: model name for token counting (``None``: o200k_base).
    """

    def __init__(
        self,
        *,
        style: Literal["facts", "sentences"] = "facts",
        min_score: float = 0.0,
        telegraphic: bool = True,
        plain_share: float = 0.25,
        model: str | None = None,
    ) -> None:
        if style not in ("facts", "sentences"):
            raise ValueError(
                f"ExtractiveSummarizer style must be 'facts' or 'sentences', got {style!r}"
            )
        if min_score < 0:
            raise ValueError(f"ExtractiveSummarizer min_score must be >= 0, got {min_score}")
        if not 0.0 <= plain_share <= 1.0:
            raise ValueError(
                f"ExtractiveSummarizer plain_share must be in [0, 1], got {plain_share}"
            )
        self.style = style
        self.min_score = min_score
        self.telegraphic = telegraphic
        self.plain_share = plain_share
        self.model = model

    def summarize(self, messages: Sequence[Message], previous_summary: str, max_tokens: int) -> str:
        """A section covering ``messages``, in at most ``max_tokens`` tokens."""
        check_summary_args(previous_summary, max_tokens)
        if max_tokens <= 0:
            return ""
        messages = to_messages(messages)
        compaction = is_compaction(messages)
        known = "" if compaction else previous_summary
        if self.style == "facts":
            return self._select_facts(
                self._fact_units(messages, known, compaction), max_tokens, compaction
            )
        candidates = self._candidates(messages, known, compaction)
        return self._select(candidates, max_tokens, compaction)

    # ------------------------------------------------------------ facts style

    def _fact_units(
        self, messages: Sequence[Message], previous_summary: str, compaction: bool
    ) -> list[_Unit]:
        """The fact spans of every message (or every item of the summary, to compact it)."""
        known = previous_summary.lower()
        known_lines = known.splitlines()
        seen: set[str] = set()
        out: list[_Unit] = []
        where = 0

        def add(label: str, text: str, kind: str, fact: bool) -> None:
            key = text.lower()
            if len(text) < 1 or key in seen or (known and key in known):
                return
            seen.add(key)
            tokens = count_text(text, self.model) + 1
            out.append(_Unit(len(out), label, text, kind, fact, tokens, where))

        def add_fields(label: str, fields: Sequence[Field], subject: str) -> None:
            # A field is known, or a repeat, only for the same record: "status=shipped" of
            # order A-102 is news after "status=shipped" of order A-101.
            anchor = next((a.text for a in fields if subject and a.value.lower() == subject), "")
            for f in fields:
                text = f.text
                if text == anchor and len(fields) > 1:
                    continue  # shown on the line of each field kept, not on a line of its own
                key = f"{subject}\x00{text.lower()}"
                if key in seen or any(
                    text.lower() in line and subject in line for line in known_lines
                ):
                    continue
                seen.add(key)
                tokens = count_text(text, self.model) + 1
                kind = f"field:{label}:{subject}:{f.slot}"
                out.append(_Unit(len(out), label, text, kind, True, tokens, where, True, anchor))

        for m in messages:
            where += 1
            if compaction:
                for label, body in summary_lines(m.text):
                    where += 1
                    items = [item.strip() for item in body.split("; ") if item.strip()]
                    fields = [
                        Field(f.group(1), f.group(2), f.group(1))
                        for f in (FIELD_ITEM.match(item) for item in items)
                        if f
                    ]
                    add_fields(label, fields, record_subject(fields, body))
                    for item in items:
                        if FIELD_ITEM.match(item):
                            continue
                        spans = fact_spans(item)
                        kind = spans[-1].kind if len(spans) == 1 else ""
                        add(label, item, kind, bool(spans) or item.lower() in ("yes", "no"))
                continue
            label = label_of(m)
            text = m.text.strip()
            if m.role == "tool":
                fields, text = tool_fields(text)
                text = text.strip(" \t\n,;|:")
                add_fields(label, fields, record_subject(fields, m.text))
            if m.role == "user" and text:
                first = bare_word(text.split()[0]).lower()
                if first in YES_WORDS or first in NO_WORDS:
                    add(label, "yes" if first in YES_WORDS else "no", "decision", True)
            spans = fact_spans(text) if text else ()
            for span in spans:
                add(label, span.text, span.kind, True)
            if text and not spans:  # no value stated: keep the gist while room is left
                gist = " ".join(
                    c
                    for c in (
                        clean_sentence(p, True)
                        for p in split_chat_sentences(text)
                        if p and p.strip()
                    )
                    if len(c) > 1 and not is_filler(c)
                )
                if gist:
                    add(label, gist, "", False)
            calls = tool_call_text(m)
            if calls:
                add(label, calls, "", True)
        return out

    def _select_facts(self, units: list[_Unit], max_tokens: int, compaction: bool) -> str:
        """Every unit if it fits; else facts first (recent and not superseded first), then gists.

        A value another fact restates whole ("Nopa" beside "Nopa on March 1st at 8 pm") is
        dropped first: the longer one carries it.
        """
        n = len(units)  # orders run over all units, restated ones included
        lows = [u.text.lower() for u in units]
        # Fields keep their keys, and a value of one record is no restatement of another's.
        facts = [(u, low) for u, low in zip(units, lows, strict=True) if u.fact and not u.field]
        units = [
            u
            for u, low in zip(units, lows, strict=True)
            if u.field or not any(v is not u and low in other for v, other in facts)
        ]
        if not units:
            return ""
        text = self._render_units(units)
        if count_text(text, self.model) <= max_tokens:
            return text
        latest: dict[str, int] = {}
        for u in units:
            if u.kind and not u.kind.startswith("name"):
                latest[u.kind] = u.order

        def superseded(u: _Unit) -> bool:  # a later value of its kind replaces it
            return bool(u.kind) and latest.get(u.kind, u.order) > u.order

        def value(u: _Unit) -> float:
            recency = u.order / n
            # A section is written once, so it has no reason to prefer its recent turns;
            # a compaction keeps the recent ones, the older being likelier superseded.
            keep_recent = 1.5 * recency if compaction else 0.0
            return (2.0 if u.fact else 0.0) + keep_recent - 1.5 * superseded(u)

        ranked = sorted(units, key=lambda u: (-value(u), u.tokens, u.order))
        chosen: list[_Unit] = []
        budget = max_tokens - 2
        plain_room = int(max_tokens * self.plain_share) if not compaction else max_tokens
        for u in ranked:
            cost = u.tokens + 2  # separator, and a label now and then
            if not u.fact:
                if cost > plain_room:
                    continue
                plain_room -= cost
            if cost <= budget:
                chosen.append(u)
                budget -= cost
        chosen.sort(key=lambda u: u.order)
        text = self._render_units(chosen)
        while chosen and count_text(text, self.model) > max_tokens:
            # the least valuable goes, the longest of them first (it frees the most room)
            chosen.remove(min(chosen, key=lambda u: (value(u), -u.tokens, u.order)))
            text = self._render_units(chosen)
        # Per-unit costs overestimate (units of one speaker share a label): fill what is left
        # with the next facts, counting the rendered text itself; superseded values last,
        # the most recent first, as the older ones were replaced earlier.
        fill = sorted(ranked, key=lambda u: (superseded(u), -u.order if superseded(u) else 0))
        for u in fill:
            if not u.fact or u in chosen or (u.field and superseded(u)):
                continue  # an old value of a field, once dropped, would only mislead
            trial = sorted([*chosen, u], key=lambda c: c.order)
            rendered = self._render_units(trial)
            if count_text(rendered, self.model) <= max_tokens:
                chosen, text = trial, rendered
        if not chosen and units:  # one long unit: keep its head
            text = truncate_head(self._render_units(units[:1]), max_tokens)
        return text

    @staticmethod
    def _render_units(units: Sequence[_Unit]) -> str:
        """``Label: unit; unit`` lines; each tool result on a line of its own, so the
        fields of two results (two orders) never read as one record."""
        lines: list[str] = []
        last: tuple[str, int] | None = None
        anchored = {(u.message, u.text) for u in units}
        for u in units:
            tool = u.label.startswith("Tool")
            here = (u.label, u.message if tool else -1)
            text = u.text
            if u.anchor and (u.message, u.anchor) not in anchored:
                text = f"{u.anchor}; {text}"  # which record this field belongs to
                anchored.add((u.message, u.anchor))
            if here == last and lines:
                lines[-1] += "; " + text
            else:
                lines.append(f"{u.label}: {text}" if u.label else text)
                last = here
        return "\n".join(lines)

    # ------------------------------------------------------------ sentences style

    async def asummarize(
        self, messages: Sequence[Message], previous_summary: str, max_tokens: int
    ) -> str:
        """Same as ``summarize``: there is no I/O to await."""
        return self.summarize(messages, previous_summary, max_tokens)

    def _candidates(
        self, messages: Sequence[Message], previous_summary: str, compaction: bool
    ) -> list[_Sentence]:
        known = previous_summary.lower()
        seen: set[str] = set()
        out: list[_Sentence] = []
        for m in messages:
            if compaction:
                # A summary line is "Label: sentences"; keep the label with each sentence.
                pairs = [
                    (label, s)
                    for label, body in summary_lines(m.text)
                    for s in split_chat_sentences(body)
                    if s.strip()
                ]
            else:
                pairs = [(label_of(m), s) for s in sentences_of(m)]
            for label, raw in pairs:
                text = raw.strip() if compaction else clean_sentence(raw, self.telegraphic)
                key = text.lower()
                if len(text) < 2 or key in seen or is_filler(text) or (known and key in known):
                    continue
                seen.add(key)
                score, facts = sentence_features(text)
                tokens = count_text(text, self.model) + 1
                out.append(_Sentence(len(out), label, text, score, facts, tokens))
        return out

    def _select(self, candidates: list[_Sentence], max_tokens: int, compaction: bool) -> str:
        """Everything if it fits; else the most fact per token, then plain sentences."""
        if sum(c.tokens + 2 for c in candidates) <= max_tokens:
            return self._render(candidates, max_tokens)
        budget = max_tokens
        n = max(len(candidates), 1)
        scoring = [c for c in candidates if c.score > 0 and c.score >= self.min_score]
        chosen: list[_Sentence] = []
        covered: set[str] = set()

        def value(c: _Sentence) -> float:
            repeated = len(c.facts & covered)  # facts a kept sentence already states
            recency = 1.5 * c.order / n if compaction else 0.0
            return (c.score - 2.0 * repeated + recency) / (c.tokens + 2)

        while scoring and budget > 2:
            best = max(scoring, key=value)
            scoring.remove(best)
            if best.tokens + 2 <= budget:
                chosen.append(best)
                covered |= best.facts
                budget -= best.tokens + 2
            elif not chosen and budget > 8:  # one long sentence: keep its head
                text = truncate_head(best.text, budget - 3)
                chosen.append(replace(best, text=text, tokens=budget - 2))
                budget = 0
        plain = sorted(
            (c for c in candidates if c not in chosen and c.score <= 0), key=lambda c: -c.order
        )
        for c in plain:  # the most recent plain sentences, while room is left
            if c.tokens + 2 <= budget:
                chosen.append(c)
                budget -= c.tokens + 2
        chosen.sort(key=lambda c: c.order)
        return self._render(chosen, max_tokens)

    def _render(self, chosen: list[_Sentence], max_tokens: int) -> str:
        lines: list[str] = []
        last_label: str | None = None
        for c in chosen:
            if c.label == last_label and lines:
                lines[-1] += " " + c.text
            else:
                lines.append(f"{c.label}: {c.text}" if c.label else c.text)
                last_label = c.label
        text = "\n".join(lines)
        if count_text(text, self.model) > max_tokens:  # labels and joins can overshoot
            text = truncate_head(text, max_tokens)
        return text
