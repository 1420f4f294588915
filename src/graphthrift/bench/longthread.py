"""Long multi-session threads: many SGD dialogues of one simulated user chained into one thread.

History folding pays on long threads, and a bounded summary cannot hold hundreds of turns'
facts: measuring either needs conversations of 300 to 700 turns in which later questions
need facts stated sessions earlier. None ships, so this builds them from the SGD test
dialogues in the repository's ``data/`` folder, deterministically from a seed.

A thread is 10 to 30 dialogues of one simulated user, in order. After each dialogue the
user asks about facts stated earlier in the thread, templated from the facts' slot and
service ("What was the date I gave for the restaurant booking?"), and the assistant answers
with the value. Each ``Question`` records its gold answer and its distance: how many turns
back the answer last occurred in the thread. ``fact_retention`` scores a policy by whether
the prompt it sent at each question still holds the answer, by distance bucket
(1-9, 10-99 and 100+ turns back). ``docs/history.md`` defines all of it.

Example (reads ``data/sgd_test``)::

    threads = build_long_threads(4, seed=LONG_THREAD_SEED)
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from graphthrift.bench._data import read_set_file
from graphthrift.bench._data_history import Conversation, Turn
from graphthrift.errors import ConfigError

__all__ = [
    "BUCKETS",
    "LONG_THREAD_SEED",
    "LongThread",
    "Question",
    "RetentionReport",
    "bucket_of",
    "build_long_threads",
    "fact_retention",
    "holds",
    "write_jsonl",
]

LONG_THREAD_SEED = 16
"""The seed of the published long multi-session set (issue 16)."""

#: Distance buckets: (name, first distance, last distance or None for no end).
BUCKETS: tuple[tuple[str, int, int | None], ...] = (
    ("1", 1, 9),
    ("10", 10, 99),
    ("100+", 100, None),
)


def bucket_of(distance: int) -> str:
    """The bucket a distance (turns back, at least 1) falls in: ``1``, ``10`` or ``100+``."""
    for name, low, high in BUCKETS:
        if distance >= low and (high is None or distance <= high):
            return name
    raise ConfigError("distance", distance, "must be >= 1 turn back")


@dataclass(frozen=True, slots=True)
class Question:
    """A later user turn that needs a fact stated earlier.

    Attributes:
        turn_index: the question's index in the thread.
        service, slot: which fact it asks for (from the SGD annotation).
        answer: the gold answer, the slot value as the user stated it.
        fact_turn_index: the last turn before the question whose text holds the answer.
        distance: ``turn_index - fact_turn_index``.
    """

    turn_index: int
    service: str
    slot: str
    answer: str
    fact_turn_index: int
    distance: int

    @property
    def bucket(self) -> str:
        return bucket_of(self.distance)


@dataclass(frozen=True, slots=True)
class LongThread:
    """One simulated user's thread: the dialogues chained, the questions asked in it."""

    id: str
    dialogues: tuple[str, ...]
    turns: tuple[Turn, ...]
    questions: tuple[Question, ...]
    session_starts: tuple[int, ...] = ()
    """The turn each session (dialogue) begins at: a later visit, after the provider's
    prompt cache has expired (``bench history`` prices the long set both ways)."""

    def as_conversation(self) -> Conversation:
        """The thread in the shape ``graphthrift bench history`` replays."""
        return Conversation(
            self.id, "sgd_long", self.turns, has_facts=True, session_starts=self.session_starts
        )


@dataclass(frozen=True, slots=True)
class _Fact:
    service: str
    slot: str
    value: str


@dataclass(frozen=True, slots=True)
class _Dialogue:
    id: str
    turns: tuple[tuple[Turn, tuple[_Fact, ...]], ...]


def _load_dialogues(root: Path | None) -> list[_Dialogue]:
    """SGD test dialogues with the slot and service of each fact a user turn states."""
    out: list[_Dialogue] = []
    for line in read_set_file("sgd_test", "sgd_test_compact.jsonl", root).splitlines():
        if not line.strip():
            continue
        d = json.loads(line)
        turns: list[tuple[Turn, tuple[_Fact, ...]]] = []
        for t in d["turns"]:
            text = str(t["utterance"])
            user = t["speaker"] == "USER"
            facts: dict[str, _Fact] = {}
            for f in t.get("facts", []) if user else []:
                if f.get("act") != "INFORM":
                    continue
                for v in f.get("values", []):
                    value = str(v).strip()
                    # only what the user said literally can be retained
                    if len(value) > 1 and holds(text, value):
                        facts.setdefault(value, _Fact(str(f["service"]), str(f["slot"]), value))
            turns.append(
                (
                    Turn("user" if user else "assistant", text, tuple(facts)),
                    tuple(facts.values()),
                )
            )
        out.append(_Dialogue(str(d["dialogue_id"]), tuple(turns)))
    out.sort(key=lambda d: d.id)
    return out


def _service_name(service: str) -> str:
    """``Restaurants_2`` -> ``restaurants``."""
    head = service.rsplit("_", 1)[0] if service.rsplit("_", 1)[-1].isdigit() else service
    return head.replace("_", " ").lower()


def _question_text(fact: _Fact) -> str:
    slot = fact.slot.replace("_", " ")
    return f"Quick check before we go on: what was the {slot} I gave for the {_service_name(fact.service)} request?"


def holds(text: str, value: str) -> bool:
    """Whether ``text`` states ``value``: case-insensitive, as a whole word or phrase (so
    the answer "12" is not found in "120")."""
    return re.search(rf"(?<!\w){re.escape(value)}(?!\w)", text, re.IGNORECASE) is not None


class _Transcript:
    """The thread so far, with the last turn that holds each fact value stated in it.

    A value's last occurrence is never before the turn that stated it, so tracking values
    from their statement on is exact, and costs one pass per appended turn.
    """

    def __init__(self) -> None:
        self.turns: list[Turn] = []
        self.last: dict[str, int] = {}

    def append(self, turn: Turn, stated: Sequence[str] = ()) -> None:
        k = len(self.turns)
        self.turns.append(turn)
        for value in stated:
            self.last.setdefault(value.lower(), k)
        low = turn.content.lower()
        for value in self.last:
            if value in low and holds(turn.content, value):
                self.last[value] = k


def _ask(
    rng: random.Random,
    transcript: _Transcript,
    facts: list[tuple[int, _Fact]],
    asked: set[_Fact],
    questions: list[Question],
) -> None:
    """After a session: one question per distance bucket (two for 100+, the rarest), where
    a fact fits it."""
    by_key: dict[tuple[str, str], set[str]] = {}
    for _, fact in facts:
        by_key.setdefault((fact.service, fact.slot), set()).add(fact.value.lower())
    for _, low, high in (*BUCKETS, BUCKETS[-1]):
        question_at = len(transcript.turns)
        candidates: set[tuple[_Fact, int]] = set()
        for _, fact in facts:
            if fact in asked or len(by_key[(fact.service, fact.slot)]) != 1:
                continue  # asked already, or the question would have two right answers
            last = transcript.last[fact.value.lower()]
            distance = question_at - last
            if distance >= low and (high is None or distance <= high):
                candidates.add((fact, last))
        if not candidates:
            continue
        # Sorted on every field: a set iterates in hash order, which changes per process.
        fact, last = rng.choice(
            sorted(candidates, key=lambda c: (c[1], c[0].value, c[0].slot, c[0].service))
        )
        asked.add(fact)
        questions.append(
            Question(question_at, fact.service, fact.slot, fact.value, last, question_at - last)
        )
        transcript.append(Turn("user", _question_text(fact)))
        transcript.append(Turn("assistant", f"You gave {fact.value}.", (fact.value,)))


def _thread(
    rng: random.Random, pool: list[_Dialogue], number: int, limits: tuple[int, int, int, int]
) -> LongThread | None:
    min_turns, max_turns, min_dialogues, max_dialogues = limits
    chosen: list[_Dialogue] = []
    size = 0
    target = rng.randint(min_turns, max_turns) * 3 // 4  # questions add about a quarter
    while pool and len(chosen) < max_dialogues and (size < target or len(chosen) < min_dialogues):
        chosen.append(pool.pop())
        size += len(chosen[-1].turns)
    transcript = _Transcript()
    turns = transcript.turns
    facts: list[tuple[int, _Fact]] = []
    asked: set[_Fact] = set()
    questions: list[Question] = []
    starts: list[int] = []
    for dialogue in chosen:
        starts.append(len(turns))
        for turn, stated in dialogue.turns:
            facts.extend((len(turns), f) for f in stated)
            transcript.append(turn, [f.value for f in stated])
        _ask(rng, transcript, facts, asked, questions)
    if not (min_turns <= len(turns) <= max_turns and len(chosen) >= min_dialogues):
        return None
    return LongThread(
        f"sgd_long_{number:03d}",
        tuple(d.id for d in chosen),
        tuple(turns),
        tuple(questions),
        tuple(starts),
    )


def build_long_threads(
    n_threads: int = 20,
    seed: int = LONG_THREAD_SEED,
    *,
    root: Path | None = None,
    min_turns: int = 300,
    max_turns: int = 700,
    min_dialogues: int = 10,
    max_dialogues: int = 30,
) -> list[LongThread]:
    """``n_threads`` long threads from the SGD test dialogues, the same for the same seed.

    Each thread uses dialogues no other thread uses. Raises ``ConfigError`` when the
    dialogues run out before ``n_threads`` threads are built.
    """
    if n_threads < 1:
        raise ConfigError("n_threads", n_threads, "must be >= 1")
    if not 1 <= min_dialogues <= max_dialogues:
        raise ConfigError("min_dialogues", min_dialogues, f"must be in 1..{max_dialogues}")
    if not 1 <= min_turns <= max_turns:
        raise ConfigError("min_turns", min_turns, f"must be in 1..{max_turns}")
    rng = random.Random(seed)
    pool = _load_dialogues(root)
    rng.shuffle(pool)
    threads: list[LongThread] = []
    limits = (min_turns, max_turns, min_dialogues, max_dialogues)
    while len(threads) < n_threads and pool:
        thread = _thread(rng, pool, len(threads), limits)
        if thread is not None:
            threads.append(thread)
    if len(threads) < n_threads:
        raise ConfigError(
            "n_threads", n_threads, f"the SGD test set holds dialogues for {len(threads)} threads"
        )
    return threads


@dataclass(frozen=True, slots=True)
class RetentionReport:
    """Share of questions whose answer was still in the prompt, overall and by bucket."""

    overall: float | None
    by_bucket: Mapping[str, float | None]
    questions: Mapping[str, int]

    def as_json(self) -> dict[str, Any]:
        return {
            "fact_retention": self.overall,
            "fact_retention_by_distance": dict(self.by_bucket),
            "questions_by_distance": dict(self.questions),
        }


def fact_retention(
    threads: Sequence[LongThread], prompts: Mapping[tuple[str, int], str | Sequence[str]]
) -> RetentionReport:
    """Score a policy by the prompts it sent: a question counts as retained when the text
    sent before it (``prompts[(thread id, question turn index)]``, the messages before the
    question) contains its answer, case-insensitively. A question without a prompt counts
    as lost."""
    kept: dict[str, int] = {name: 0 for name, _, _ in BUCKETS}
    total: dict[str, int] = {name: 0 for name, _, _ in BUCKETS}
    for thread in threads:
        for q in thread.questions:
            sent = prompts.get((thread.id, q.turn_index), "")
            text = sent if isinstance(sent, str) else "\n".join(sent)
            total[q.bucket] += 1
            kept[q.bucket] += holds(text, q.answer)
    asked = sum(total.values())
    return RetentionReport(
        sum(kept.values()) / asked if asked else None,
        {b: (kept[b] / total[b] if total[b] else None) for b in total},
        total,
    )


def write_jsonl(threads: Sequence[LongThread], path: str | Path) -> Path:
    """The threads in the conversations JSONL of ``docs/benchmarks.md`` (facts per turn),
    with each thread's questions beside its turns, for ``bench history --conversations``."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("w", encoding="utf-8") as out:
        for t in threads:
            record = {
                "id": t.id,
                "dialogues": list(t.dialogues),
                "session_starts": list(t.session_starts),
                "turns": [
                    {"role": turn.role, "content": turn.content, "facts": list(turn.facts)}
                    for turn in t.turns
                ],
                "questions": [
                    {
                        "turn_index": q.turn_index,
                        "service": q.service,
                        "slot": q.slot,
                        "answer": q.answer,
                        "fact_turn_index": q.fact_turn_index,
                        "distance": q.distance,
                    }
                    for q in t.questions
                ],
            }
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
    return target
