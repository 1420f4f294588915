"""Properties of history pruning that must never break, over random valid conversations.

Conversations mix system messages, plain turns, agent loops with parallel tool calls
(results in any order), content-block lists, None content and the odd huge message. Each
is replayed turn by turn, as an agent would, carrying the pruner's state.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from graphthrift.history import SUMMARY_ID, HistoryPruner, HistoryState, PruneResult
from graphthrift.text import Message, ToolCall, to_message

WORDS = [
    "the",
    "order",
    "A-1042",
    "ships",
    "to",
    "Berlin",
    "on",
    "May",
    "3rd",
    "at",
    "7:30",
    "pm",
    "for",
    "4",
    "people",
    "please",
    "confirm",
    "invoice",
    "ana@example.com",
    "budget",
    "$1,200",
    "we",
    "decided",
    "Lisbon",
    "instead",
    "thanks",
    "ok",
    "sure",
    "maybe",
    "café",
    "naïve",
    "東京",
    "emoji",
    "🚀",
    "tool",
    "result",
    "status",
    "shipped",
    "pending",
    "refund",
    "id=77",
]
PROPERTY_SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@dataclass
class Counter:
    n: int = 0

    def next(self, prefix: str) -> str:
        self.n += 1
        return f"{prefix}{self.n}"


def text(draw: st.DrawFn, low: int = 1, high: int = 40) -> str:
    n = draw(st.integers(low, high))
    if draw(st.integers(0, 30)) == 0:
        n = draw(st.integers(600, 1500))  # now and then one message larger than most budgets
    return " ".join(draw(st.lists(st.sampled_from(WORDS), min_size=n, max_size=n)))


def content(draw: st.DrawFn) -> str | list[dict[str, object]]:
    body = text(draw)
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return [
            {"type": "text", "text": body},
            {"type": "image_url", "image_url": {"url": "https://x/y.png"}},
        ]
    if kind == 1:
        return [{"type": "text", "text": body}]
    return body


@st.composite
def conversations(draw: st.DrawFn) -> list[Message]:
    """A valid thread: every ToolMessage answers a call of the AI message before it."""
    ids = Counter()
    msgs: list[Message] = []
    for _ in range(draw(st.integers(0, 2))):
        msgs.append(Message("system", text(draw, 3, 30), id=ids.next("s")))
    for _ in range(draw(st.integers(0, 14))):
        msgs.append(to_message({"role": "user", "content": content(draw), "id": ids.next("u")}))
        for _ in range(draw(st.integers(0, 3))):
            if draw(st.booleans()):
                n_calls = draw(st.integers(1, 3))
                calls = tuple(
                    ToolCall(ids.next("c"), "lookup", json.dumps({"q": text(draw, 1, 5)}))
                    for _ in range(n_calls)
                )
                ai_content = draw(st.sampled_from(["", None, "Let me check."]))
                msgs.append(Message("assistant", ai_content or "", calls, id=ids.next("a")))
                order = draw(st.permutations(list(calls)))
                for call in order:
                    msgs.append(
                        Message(
                            "tool",
                            text(draw, 1, 60),
                            tool_call_id=call.id,
                            name="lookup",
                            id=ids.next("t"),
                        )
                    )
            else:
                msgs.append(
                    to_message({"role": "assistant", "content": content(draw), "id": ids.next("a")})
                )
        if draw(st.integers(0, 12)) == 0:
            msgs.append(Message("system", "Note: " + text(draw, 2, 10), id=ids.next("s")))
    return msgs


pruners = st.builds(
    lambda high, ratio, keep: HistoryPruner(
        max_tokens=high, target_tokens=max(int(high * ratio), 40), keep_turns=keep
    ),
    st.integers(160, 900),
    st.floats(0.5, 0.9),
    st.integers(1, 3),
)


def prompt_points(msgs: list[Message]) -> list[int]:
    """Where an agent calls the model: after a user message or after tool results."""
    return [
        i + 1
        for i, m in enumerate(msgs)
        if m.role in ("user", "tool") and (i + 1 == len(msgs) or msgs[i + 1].role == "assistant")
    ]


def pair_groups(msgs: list[Message]) -> list[set[int]]:
    """Each AI message with tool calls, with the ToolMessages that answer it."""
    groups = []
    for i, m in enumerate(msgs):
        if m.tool_calls:
            call_ids = {c.id for c in m.tool_calls}
            groups.append(
                {i}
                | {k for k, t in enumerate(msgs) if t.role == "tool" and t.tool_call_id in call_ids}
            )
    return groups


def latest_request(msgs: list[Message]) -> list[int]:
    """The latest human turn: the last user message and the user messages right before it."""
    users = [i for i, m in enumerate(msgs) if m.role == "user"]
    if not users:
        return []
    first = users[-1]
    while first > 0 and msgs[first - 1].role == "user":
        first -= 1
    return list(range(first, users[-1] + 1))


def check_invariants(msgs: list[Message], result: PruneResult, pruner: HistoryPruner) -> None:
    kept = set(result.kept)
    hidden = set(result.hidden)
    # Every input message is sent or behind the boundary, never both, never lost.
    assert kept | hidden == set(range(len(msgs))) and not kept & hidden
    # Tool pairs are never split.
    for group in pair_groups(msgs):
        assert group <= kept or group <= hidden, (group, sorted(kept))
    # The window never opens on a ToolMessage.
    window = [m for m in result.messages if m.role != "system" and m.id != SUMMARY_ID]
    if window:
        assert window[0].role != "tool"
    # Conversation order is preserved.
    conv = [k for k in result.kept if msgs[k].role != "system"]
    assert conv == sorted(conv)
    # The latest human turn is always sent, verbatim (issue 11.6).
    request = latest_request(msgs)
    for k in request:
        assert k in kept and k not in result.truncated
        assert result.messages[result.origin.index(k)] == msgs[k]
    # Nothing is hidden that was not folded: hidden ones all precede the window. Only
    # human turns (the latest, or the one held since the last fold) are sent from behind it.
    if hidden:
        assert all(msgs[k].role == "user" for k in conv if k < max(hidden))
    # The budget holds, or the result says why not.
    assert result.tokens_out <= pruner.max_tokens or result.over_budget
    for i in result.truncated:
        sent = result.messages[result.origin.index(i)]
        where = [sent.text, *(c.args for c in sent.tool_calls)]
        assert any("tokens truncated]" in w for w in where), "a cut is always marked"
        for call in sent.tool_calls:
            json.loads(call.args)  # arguments stay valid JSON


@PROPERTY_SETTINGS
@given(conversations(), pruners)
def test_replay_keeps_tool_pairs_and_a_sticky_prefix(
    msgs: list[Message], pruner: HistoryPruner
) -> None:
    state: HistoryState | None = None
    previous: list[tuple[str, str]] | None = None
    over = False
    cut: set[int] = set()
    cut_texts: dict[int, str] = {}
    ever_folded: set[int] = set()
    for end in prompt_points(msgs):
        result = pruner.prune(msgs[:end], state)
        check_invariants(msgs[:end], result, pruner)
        ever_folded |= set(result.folded)
        # Hidden means folded; a folded request is still sent while it is the latest.
        assert set(result.hidden) == ever_folded - set(result.kept)
        sent = [(m.role, m.text) for m in result.messages]
        # A cut made (or no longer needed) to fit the budget when no fold can help, e.g.
        # beside a held request, changes the prompt like a fold does; it is marked.
        # A cut whose size changed (a long message cut to what the budget leaves) counts too.
        cuts = {i: result.messages[result.origin.index(i)].text for i in result.truncated}
        new_cut = set(result.truncated) != cut or any(
            cut_texts.get(i) not in (None, text) for i, text in cuts.items()
        )
        if previous is not None and not (
            result.summarized or over or result.over_budget or new_cut
        ):
            assert sent[: len(previous)] == previous, "between folds each prompt extends the last"
        previous, over, cut, cut_texts = sent, result.over_budget, set(result.truncated), cuts
        state = result.state


@PROPERTY_SETTINGS
@given(conversations(), pruners)
def test_destructive_rewrite_sends_the_same_prompt(
    msgs: list[Message], pruner: HistoryPruner
) -> None:
    result = pruner.prune(msgs)
    rewritten = result.materialize(lambda m: m, lambda src, m: m)
    again = pruner.prune(rewritten, result.state.rebased())
    assert [(m.role, m.text) for m in again.messages] == [(m.role, m.text) for m in result.messages]


@PROPERTY_SETTINGS
@given(conversations(), pruners)
def test_state_survives_json(msgs: list[Message], pruner: HistoryPruner) -> None:
    result = pruner.prune(msgs)
    restored = HistoryState.from_dict(json.loads(json.dumps(result.state.to_dict())))
    assert restored == result.state
    assert [(m.role, m.text) for m in pruner.view(msgs, restored).messages] == [
        (m.role, m.text) for m in result.messages
    ]


@st.composite
def tool_loops(draw: st.DrawFn) -> list[Message]:
    """A thread that ends in one user turn followed by a long run of tool round-trips."""
    ids = Counter()
    msgs = [Message("system", "You are a support agent.", id="s0")]
    for _ in range(draw(st.integers(0, 3))):
        msgs.append(Message("user", text(draw, 3, 30), id=ids.next("u")))
        msgs.append(Message("assistant", text(draw, 3, 30), id=ids.next("a")))
    for _ in range(draw(st.integers(1, 2))):  # the latest human turn, one or two messages
        msgs.append(to_message({"role": "user", "content": content(draw), "id": ids.next("u")}))
    for _ in range(draw(st.integers(1, 14))):
        n_calls = draw(st.integers(1, 2))
        calls = tuple(
            ToolCall(ids.next("c"), "track_order", json.dumps({"order_id": "A-105"}))
            for _ in range(n_calls)
        )
        msgs.append(Message("assistant", "", calls, id=ids.next("a")))
        for call in draw(st.permutations(list(calls))):
            body = {"order_id": "A-105", "status": draw(st.sampled_from(WORDS)), "log": text(draw)}

            msgs.append(
                Message(
                    "tool",
                    json.dumps(body),
                    tool_call_id=call.id,
                    name="track_order",
                    id=ids.next("t"),
                )
            )
    return msgs


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.large_base_example],
)
@given(tool_loops(), pruners)
def test_tool_loops_always_send_the_latest_request_verbatim_with_whole_pairs(
    msgs: list[Message], pruner: HistoryPruner
) -> None:
    state: HistoryState | None = None
    for end in prompt_points(msgs):
        result = pruner.prune(msgs[:end], state)
        check_invariants(msgs[:end], result, pruner)  # request verbatim, pairs whole
        request = [msgs[k] for k in latest_request(msgs[:end])]
        sent_users = [m for m in result.messages if m.role == "user" and m.id != SUMMARY_ID]
        assert sent_users[-len(request) :] == request
        state = result.state
