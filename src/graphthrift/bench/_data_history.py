"""Conversations for ``graphthrift bench history``: the bundled data sets and the JSONL format.

Three readers, one shape. ``topical_chat`` (Alexa Topical-Chat, agent_1 as the user),
``sgd_test`` (Schema-Guided Dialogue test dialogues, with the slot values each turn states
as its facts) and the generic conversations JSONL of ``docs/benchmarks.md``. Facts
count only when the turn states them literally: SGD lists values such as ``False`` for a
yes/no slot that no utterance contains, and a fact never said cannot be retained.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from graphthrift.bench._data import DataFileError, DataSetMissing, read_text
from graphthrift.errors import ConversationFormatError

__all__ = [
    "Conversation",
    "ConversationFormatError",
    "Turn",
    "load_conversations_jsonl",
    "load_default_sets",
    "load_sgd",
    "load_topical_chat",
]

TOPICAL_CHAT = Path("topical_chat") / "valid_freq.json"  # or .gz
SGD_TEST = Path("sgd_test") / "sgd_test_compact.jsonl.gz"


@dataclass(frozen=True, slots=True)
class Turn:
    """One message of a conversation and the facts it states."""

    role: str
    content: str
    facts: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Conversation:
    """A conversation to replay; ``has_facts`` says whether fact retention is measurable,
    ``session_starts`` the turns that begin a later visit (a multi-session thread)."""

    id: str
    source: str
    turns: tuple[Turn, ...]
    has_facts: bool = False
    session_starts: tuple[int, ...] = ()


def _stated(values: list[Any], utterance: str) -> list[str]:
    low = utterance.lower()
    return [v for v in (str(x).strip() for x in values) if v and v.lower() in low]


def load_topical_chat(path: Path, limit: int | None = None, stride: int = 1) -> list[Conversation]:
    """Topical-Chat conversations; agent_1 speaks as the user, agent_2 as the assistant."""
    data = json.loads(read_text(path))
    out: list[Conversation] = []
    for k, (conv_id, conv) in enumerate(data.items()):
        if k % stride:
            continue
        turns = tuple(
            Turn("user" if m.get("agent") == "agent_1" else "assistant", str(m.get("message", "")))
            for m in conv.get("content", [])
        )
        out.append(Conversation(str(conv_id), "topical_chat", turns))
        if limit is not None and len(out) >= limit:
            break
    return out


def load_sgd(path: Path, limit: int | None = None, stride: int = 1) -> list[Conversation]:
    """SGD test dialogues; each turn's facts are the slot values its utterance states."""
    out: list[Conversation] = []
    # read whole: a truncated gzip fails here, before any dialogue is used
    for k, line in enumerate(read_text(path).splitlines()):
        if k % stride or not line.strip():
            continue
        d = json.loads(line)
        turns = []
        for t in d["turns"]:
            values = [v for f in t.get("facts", []) for v in f.get("values", [])]
            facts = tuple(dict.fromkeys(_stated(values, t["utterance"])))
            turns.append(
                Turn("user" if t["speaker"] == "USER" else "assistant", t["utterance"], facts)
            )
        out.append(Conversation(str(d["dialogue_id"]), "sgd_test", tuple(turns), has_facts=True))
        if limit is not None and len(out) >= limit:
            break
    return out


def _jsonl_lines(path: Path) -> Iterator[tuple[int, str]]:
    for number, line in enumerate(read_text(path).splitlines(), 1):
        if line.strip():
            yield number, line


def load_conversations_jsonl(path: Path, limit: int | None = None) -> list[Conversation]:
    """The generic format: one ``{"id", "turns": [{"role", "content", "facts"?}],
    "session_starts"?}`` a line (``session_starts``: the turns that begin a later visit)."""
    out: list[Conversation] = []
    for number, line in _jsonl_lines(path):
        try:
            d = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConversationFormatError(path, number, f"not JSON ({exc.msg})") from None
        if not isinstance(d, dict) or not isinstance(d.get("turns"), list):
            raise ConversationFormatError(path, number, "missing the 'turns' list")
        turns = []
        has_facts = False
        for k, t in enumerate(d["turns"]):
            if not isinstance(t, dict) or t.get("role") not in ("user", "assistant", "system"):
                raise ConversationFormatError(
                    path, number, f"turn {k} needs role 'user' or 'assistant'"
                )
            content = t.get("content")
            if not isinstance(content, str):
                raise ConversationFormatError(path, number, f"turn {k} content must be a string")
            facts = t.get("facts") or []
            if not isinstance(facts, list) or not all(isinstance(f, str) for f in facts):
                raise ConversationFormatError(
                    path, number, f"turn {k} facts must be a list of strings"
                )
            has_facts = has_facts or bool(facts)
            turns.append(Turn(t["role"], content, tuple(_stated(facts, content))))
        starts = d.get("session_starts") or []
        if not isinstance(starts, list) or not all(
            isinstance(s, int) and not isinstance(s, bool) and 0 <= s < len(turns) for s in starts
        ):
            raise ConversationFormatError(
                path, number, f"session_starts must be a list of turn indexes 0..{len(turns) - 1}"
            )
        out.append(
            Conversation(
                str(d.get("id", number)),
                path.stem,
                tuple(turns),
                has_facts,
                tuple(sorted(set(starts))),
            )
        )
        if limit is not None and len(out) >= limit:
            break
    return out


def load_default_sets(
    data_dir: Path,
    limit: int | None = None,
    stride: int = 1,
    problems: list[DataSetMissing] | None = None,
) -> dict[str, list[Conversation]]:
    """The bundled sets found under ``data_dir`` (a missing or damaged one is left out and,
    with ``problems``, reported there); ``stride`` keeps every n-th conversation, a sample
    that keeps the sets' proportions."""
    from graphthrift.bench._data import data_file

    loaders = {"topical_chat": (TOPICAL_CHAT, load_topical_chat), "sgd_test": (SGD_TEST, load_sgd)}
    sets: dict[str, list[Conversation]] = {}
    for name, (rel, load) in loaders.items():
        try:
            path = data_file(name, rel.name, data_dir)
            sets[name] = load(path, limit, stride)
        except DataSetMissing as exc:
            if problems is not None:
                problems.append(exc)
        except DataFileError as exc:
            if problems is not None:
                problems.append(DataSetMissing(name, exc.path, f"is damaged ({exc.problem})"))
    return sets
