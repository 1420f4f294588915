"""The long multi-session set: deterministic, questions whose facts sit where they say."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from graphthrift.bench._data_history import load_conversations_jsonl
from graphthrift.bench.longthread import (
    BUCKETS,
    LONG_THREAD_SEED,
    LongThread,
    bucket_of,
    build_long_threads,
    fact_retention,
    holds,
    write_jsonl,
)
from graphthrift.errors import ConfigError


@pytest.fixture(scope="module")
def threads(bench_data: Path) -> list[LongThread]:
    return build_long_threads(12, LONG_THREAD_SEED, root=bench_data)


def test_the_same_seed_builds_the_same_threads(bench_data: Path, threads: list[LongThread]) -> None:
    again = build_long_threads(12, LONG_THREAD_SEED, root=bench_data)
    assert again == threads
    other = build_long_threads(12, LONG_THREAD_SEED + 1, root=bench_data)
    assert [t.dialogues for t in other] != [t.dialogues for t in threads]


def test_the_same_seed_builds_the_same_questions_in_every_process(bench_data: Path) -> None:
    """Set iteration order follows the process's hash seed: a question picked from a set by
    an incomplete sort key changed wording ("the hotels request" / "the travel request")
    from one process to the next, and the bench's retention with it."""
    code = (
        "import sys; from pathlib import Path; "
        "from graphthrift.bench.longthread import build_long_threads, LONG_THREAD_SEED; "
        "ts = build_long_threads(6, LONG_THREAD_SEED, root=Path(sys.argv[1])); "
        "print(repr([t.questions for t in ts]))"
    )
    built = {
        subprocess.run(
            [sys.executable, "-c", code, str(bench_data)],
            env={**os.environ, "PYTHONHASHSEED": str(seed)},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for seed in range(4)
    }
    assert len(built) == 1, "the questions depend on the process's hash seed"


def test_threads_are_long_chains_of_distinct_dialogues(threads: list[LongThread]) -> None:
    seen: set[str] = set()
    for t in threads:
        assert 300 <= len(t.turns) <= 700, (t.id, len(t.turns))
        assert 10 <= len(t.dialogues) <= 30, (t.id, len(t.dialogues))
        assert not seen & set(t.dialogues)  # one simulated user per thread
        seen |= set(t.dialogues)
        assert t.as_conversation().turns == t.turns


def test_each_session_starts_where_its_dialogue_does(threads: list[LongThread]) -> None:
    """A session is one dialogue, and the quick checks close it: the next session starts
    right after them (``bench history`` prices the long set with sessions a day apart)."""
    for t in threads:
        starts = t.session_starts
        assert len(starts) == len(t.dialogues) and starts[0] == 0
        assert list(starts) == sorted(set(starts)) and starts[-1] < len(t.turns)
        assert all(t.turns[s].role == "user" for s in starts)
        asked = {q.turn_index for q in t.questions}
        assert not asked & set(starts)
        for q in t.questions:  # a question, its answer, then more questions or a new session
            after = q.turn_index + 2
            while after in asked:
                after += 2
            assert after == len(t.turns) or after in starts, (t.id, q)
        assert t.as_conversation().session_starts == starts


def test_every_question_finds_its_fact_at_the_recorded_distance(threads: list[LongThread]) -> None:
    for t in threads:
        assert t.questions, t.id
        for q in t.questions:
            asked = t.turns[q.turn_index]
            assert asked.role == "user" and not holds(asked.content, q.answer)
            assert q.distance == q.turn_index - q.fact_turn_index >= 1
            assert holds(t.turns[q.fact_turn_index].content, q.answer)
            between = t.turns[q.fact_turn_index + 1 : q.turn_index]
            assert not any(holds(turn.content, q.answer) for turn in between), q
            # the answer is unique: no other value was given for this service and slot
            others = [
                p.answer.lower()
                for p in t.questions
                if (p.service, p.slot) == (q.service, q.slot) and p.turn_index < q.turn_index
            ]
            assert set(others) <= {q.answer.lower()}
            assert q.slot.replace("_", " ") in asked.content
            # the assistant answers with the gold value
            assert holds(t.turns[q.turn_index + 1].content, q.answer)


def test_every_distance_bucket_is_asked(threads: list[LongThread]) -> None:
    buckets = {q.bucket for t in threads for q in t.questions}
    assert buckets == {name for name, _, _ in BUCKETS}
    assert [bucket_of(d) for d in (1, 9, 10, 99, 100, 650)] == [
        "1",
        "1",
        "10",
        "10",
        "100+",
        "100+",
    ]
    with pytest.raises(ConfigError):
        bucket_of(0)


def test_retention_by_distance_from_a_policys_prompts(threads: list[LongThread]) -> None:
    full = {
        (t.id, q.turn_index): [turn.content for turn in t.turns[: q.turn_index]]
        for t in threads
        for q in t.questions
    }
    report = fact_retention(threads, full)
    assert report.overall == 1.0
    assert all(v == 1.0 for v in report.by_bucket.values())
    assert sum(report.questions.values()) == sum(len(t.questions) for t in threads)
    # a policy that keeps only the last 20 turns keeps every 1-9 fact and no 100+ fact
    window = {key: turns[-20:] for key, turns in full.items()}
    windowed = fact_retention(threads, window)
    assert windowed.by_bucket["1"] == 1.0
    assert windowed.by_bucket["100+"] == 0.0
    assert windowed.overall is not None and 0 < windowed.overall < 1
    assert fact_retention(threads, {}).overall == 0.0
    assert set(windowed.as_json()) == {
        "fact_retention",
        "fact_retention_by_distance",
        "questions_by_distance",
    }


def test_holds_matches_whole_words_only() -> None:
    assert holds("Table for 12 at noon", "12")
    assert not holds("Table for 120 at noon", "12")
    assert holds("I'm at P.f. Chang's tonight", "p.f. chang's")


def test_jsonl_round_trips_the_turns(threads: list[LongThread], tmp_path: Path) -> None:
    path = write_jsonl(threads[:2], tmp_path / "long.jsonl")
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["id"] for r in rows] == [t.id for t in threads[:2]]
    assert [turn["content"] for turn in rows[0]["turns"]] == [t.content for t in threads[0].turns]
    assert rows[0]["questions"][0]["answer"] == threads[0].questions[0].answer
    loaded = load_conversations_jsonl(path)
    assert [c.session_starts for c in loaded] == [t.session_starts for t in threads[:2]]
    assert [c.turns for c in loaded] == [t.as_conversation().turns for t in threads[:2]]


def test_bad_arguments_are_named(bench_data: Path) -> None:
    with pytest.raises(ConfigError, match="n_threads"):
        build_long_threads(0, root=bench_data)
    with pytest.raises(ConfigError, match="min_dialogues"):
        build_long_threads(1, min_dialogues=31, root=bench_data)
    with pytest.raises(ConfigError, match="min_turns"):
        build_long_threads(1, min_turns=800, root=bench_data)
