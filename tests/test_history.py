"""History pruning core: watermarks, sticky boundary, summary sections, bad input, summarizers."""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from typing import Any

import pytest
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, HumanMessage

from graphthrift import diagnostics
from graphthrift.history import (
    SUMMARY_ID,
    HistoryConfigError,
    HistoryPruner,
    HistoryState,
    HistoryStateError,
    UnsupportedMessage,
    prune_history,
    truncate_text,
)
from graphthrift.summarize import (
    SECTION_NAME,
    ChatModelSummarizer,
    ExtractiveSummarizer,
    Summarizer,
    render_transcript,
)
from graphthrift.text import Message, ToolCall, count_messages, count_text

from fakes import usage_model

FACTS = [
    "Book a table at Nopa in San Francisco for 4 people on May 3rd at 7:30 pm.",
    "My loyalty id is GT-55821 and my phone is 415-555-0199.",
    "We decided to move the offsite to Lisbon on June 12th.",
    "The budget is $12,400 for 18 people.",
    "Send the invoice to ana@example.com by Friday.",
]


def chat(turns: int, *, system: str | None = "You are a concise assistant.") -> list[Message]:
    """A thread of ``turns`` user/assistant exchanges, each user turn stating a fact."""
    msgs = [Message("system", system)] if system else []
    for i in range(turns):
        msgs.append(Message("user", f"Turn {i}: {FACTS[i % len(FACTS)]} Thanks a lot!", id=f"u{i}"))
        msgs.append(Message("assistant", f"Sure, noted for turn {i}. Anything else?", id=f"a{i}"))
    return msgs


def keys(messages: Sequence[Message]) -> list[tuple[str, str]]:
    return [(m.role, m.text) for m in messages]


class Exploding:
    """A summarizer that must not be called."""

    def summarize(self, messages: Sequence[Message], previous_summary: str, max_tokens: int) -> str:
        raise AssertionError("summarizer called")

    async def asummarize(
        self, messages: Sequence[Message], previous_summary: str, max_tokens: int
    ) -> str:
        raise AssertionError("summarizer called")


# ---------------------------------------------------------------- watermarks and layout


def test_under_budget_sends_everything_unchanged() -> None:
    msgs = chat(3)
    result = HistoryPruner(max_tokens=4000, summarizer=Exploding()).prune(msgs)
    assert keys(result.messages) == keys(msgs)
    assert result.origin == tuple(range(len(msgs)))
    assert result.tokens_in == result.tokens_out == count_messages(msgs).tokens
    assert not result.summarized and result.state.summarizations == 0


def test_fold_goes_down_to_low_watermark_and_keeps_layout() -> None:
    msgs = chat(12)
    pruner = HistoryPruner(max_tokens=400, target_tokens=250, max_summary_tokens=100, keep_turns=2)
    assert count_messages(msgs).tokens > 400
    result = pruner.prune(msgs)
    assert result.summarized and result.tokens_out <= 250
    roles = [m.role for m in result.messages]
    assert roles[0] == "system" and result.messages[0].text == msgs[0].text
    assert result.messages[1].id == SUMMARY_ID and result.origin[1] is None
    assert roles[2] == "user"  # the window opens on a turn
    assert result.messages[-2:] == msgs[-2:]
    assert set(result.folded) | set(result.kept) == set(range(len(msgs)))
    assert set(result.hidden) == set(result.folded)
    assert result.state.folded == result.folded[-1] + 1
    assert result.state.folded_through_id == msgs[result.folded[-1]].id


def test_keep_turns_are_verbatim_after_a_fold() -> None:
    msgs = chat(12)
    result = HistoryPruner(
        max_tokens=400, target_tokens=60, max_summary_tokens=50, keep_turns=3
    ).prune(msgs)
    # The low watermark cannot be met with 3 turns kept: it keeps them and stops there.
    assert result.messages[-6:] == msgs[-6:]
    assert result.tokens_out > 60


def test_boundary_is_sticky_between_folds() -> None:
    pruner = HistoryPruner(max_tokens=300, target_tokens=150, keep_turns=1)
    msgs = chat(0)
    state: HistoryState | None = None
    previous: list[tuple[str, str]] | None = None
    folds = breaks = 0
    for i in range(40):
        msgs.append(Message("user", f"Turn {i}: {FACTS[i % 5]}", id=f"u{i}"))
        result = pruner.prune(msgs, state)
        assert result.tokens_out <= 300
        state = result.state
        sent = keys(result.messages)
        if previous is not None and sent[: len(previous)] != previous:
            breaks += 1
        folds += result.summarized
        previous = sent
        msgs.append(Message("assistant", f"Noted {i}.", id=f"a{i}"))
    assert folds >= 3
    assert breaks == folds  # the prefix changes only when turns are folded
    assert state is not None and state.summarizations == folds


def test_summary_grows_by_sections_then_compacts_past_its_cap() -> None:
    pruner = HistoryPruner(max_tokens=300, target_tokens=150, max_summary_tokens=120, keep_turns=1)
    msgs = chat(0)
    state = HistoryState()
    seen_sections: list[list[str]] = []
    for i in range(60):
        msgs += [
            Message("user", f"Turn {i}: {FACTS[i % 5]}", id=f"u{i}"),
            Message("assistant", f"Noted {i}.", id=f"a{i}"),
        ]
        before = list(state.sections)
        state = pruner.prune(msgs, state).state
        if state.sections != before:
            seen_sections.append(list(state.sections))
    grew = [
        s
        for prev, s in itertools.pairwise(seen_sections)
        if s[: len(prev)] == prev and len(s) == len(prev) + 1
    ]
    assert grew, "sections are appended, earlier ones untouched"
    assert state.compactions >= 1
    assert count_text(state.summary) <= 120 + 8


def test_prefix_of_pinned_system_messages_and_mid_thread_system() -> None:
    msgs = chat(10)
    msgs.insert(5, Message("system", "Policy update: never share phone numbers."))
    result = HistoryPruner(max_tokens=350, target_tokens=200, keep_turns=1).prune(msgs)
    assert result.summarized
    texts = [m.text for m in result.messages]
    assert texts[0] == msgs[0].text and texts[1] == "Policy update: never share phone numbers."
    assert result.messages[2].id == SUMMARY_ID
    assert 5 in result.kept and 5 not in result.folded


def test_summary_role_user() -> None:
    result = HistoryPruner(max_tokens=300, summary_role="user").prune(chat(12))
    assert result.summary is not None and result.summary.role == "user"


# ---------------------------------------------------------------- tool pairs


def tool_turn(i: int, n_results: int = 2) -> list[Message]:
    calls = tuple(
        ToolCall(f"c{i}-{k}", "lookup", json.dumps({"q": f"item {i}-{k}"}))
        for k in range(n_results)
    )
    out = [Message("user", f"Look up the order status for batch {i}, please.", id=f"u{i}")]
    out.append(Message("assistant", "", calls, id=f"a{i}"))
    out += [
        Message(
            "tool",
            json.dumps({"order": f"A-{i}{k}", "status": "shipped", "eta": "June 3rd"}),
            tool_call_id=f"c{i}-{k}",
            name="lookup",
            id=f"t{i}-{k}",
        )
        for k in range(n_results)
    ]
    out.append(Message("assistant", f"Batch {i} has shipped; it arrives June 3rd.", id=f"f{i}"))
    return out


def test_fold_never_splits_a_tool_pair_even_inside_one_long_turn() -> None:
    # One user turn with many tool rounds: only cut points between rounds are usable.
    msgs = [Message("user", "Reconcile all batches.", id="u")]
    for i in range(12):
        msgs.append(
            Message(
                "assistant", "", (ToolCall(f"c{i}", "lookup", f'{{"batch": {i}}}'),), id=f"a{i}"
            )
        )
        msgs.append(
            Message(
                "tool",
                json.dumps({"batch": i, "total": 1000 + i, "currency": "EUR"}),
                tool_call_id=f"c{i}",
                name="lookup",
                id=f"t{i}",
            )
        )
    result = HistoryPruner(max_tokens=300, keep_turns=1).prune(msgs)
    assert result.tokens_out <= 300
    window = [m for m in result.messages if m.role != "system" and m.id != SUMMARY_ID]
    assert window[0].role != "tool"
    kept_ids = {m.id for m in window}
    for i in range(12):
        assert (f"a{i}" in kept_ids) == (f"t{i}" in kept_ids)


def test_orphan_tool_message_never_opens_the_window() -> None:
    msgs = [
        Message("tool", '{"status": "ok", "ticket": "T-991"}', tool_call_id="gone", id="t0"),
        *chat(2, system=None),
    ]
    result = HistoryPruner(max_tokens=4000).prune(msgs)
    assert result.messages[0].id == SUMMARY_ID
    assert result.messages[1].role == "user"
    assert result.folded == (0,)
    assert "T-991" in result.messages[0].text


# ---------------------------------------------------------------- bad input


def test_empty_thread() -> None:
    result = HistoryPruner(summarizer=Exploding()).prune([])
    assert result.messages == [] and result.tokens_out == 0 and result.origin == ()


def test_system_only_thread() -> None:
    msgs = [Message("system", "Be brief."), Message("system", "Answer in French.")]
    result = HistoryPruner(summarizer=Exploding()).prune(msgs)
    assert keys(result.messages) == keys(msgs)


def test_content_blocks_and_none_content() -> None:
    msgs = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is in this photo?"},
                {"type": "image_url", "image_url": {"url": "https://x/y.png"}},
            ],
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "c1", "name": "describe", "args": {"n": 1}}],
        },
        {"role": "tool", "content": "A cat on a mat.", "tool_call_id": "c1"},
        AIMessage(content=[{"type": "text", "text": "It is a cat."}]),
    ]
    result = HistoryPruner(summarizer=Exploding()).prune(msgs)
    assert [m.source for m in result.messages] == msgs
    assert result.tokens_out == count_messages(msgs).tokens


def test_single_message_larger_than_the_budget_is_truncated_with_a_marker() -> None:
    huge = " ".join(f"line {i}: value {i * 7}" for i in range(3000))
    msgs = [
        Message("system", "Be brief."),
        Message("user", "Paste the log.", id="ask"),
        Message("assistant", huge, id="big"),
    ]
    pruner = HistoryPruner(max_tokens=500)
    result = pruner.prune(msgs)
    assert result.truncated == (2,)
    assert result.kept == (0, 1, 2)  # never dropped
    sent = result.messages[2]
    assert "tokens truncated]" in sent.text and sent.text.startswith("line 0: value 0")
    assert sent.text.rstrip().endswith(f"value {2999 * 7}")  # head and tail survive
    assert result.tokens_out <= 500 and not result.over_budget
    assert diagnostics.get("history_message_truncated") >= 1
    # The same cut every turn, so the prefix stays stable.
    again = pruner.prune([*msgs, Message("assistant", "ok"), Message("user", "and?")], result.state)
    assert again.messages[2].text == sent.text


def test_truncated_block_content_keeps_non_text_blocks() -> None:
    image = {"type": "image_url", "image_url": {"url": "https://x/y.png"}}
    msg = {"role": "assistant", "content": [{"type": "text", "text": "word " * 3000}, image]}
    result = HistoryPruner(max_tokens=400).prune([msg])
    content = result.messages[0].content
    assert isinstance(content, tuple) and content[1] == image
    assert "tokens truncated]" in content[0]["text"]


@pytest.mark.parametrize(
    "bad", [42, object(), None, {"content": "no role"}, {"role": "wizard", "content": "x"}]
)
def test_unknown_items_raise_a_typed_error_with_their_position(bad: object) -> None:
    with pytest.raises(UnsupportedMessage) as err:
        HistoryPruner().prune([Message("user", "hi"), bad])
    assert err.value.index == 1
    assert isinstance(err.value, TypeError)


def test_a_bare_string_is_rejected() -> None:
    with pytest.raises(UnsupportedMessage):
        HistoryPruner().prune("hello")


def test_langchain_messages_map_back_to_the_same_objects() -> None:
    msgs = [
        HumanMessage(content=f"Turn {i}: {FACTS[i % 5]}", id=f"h{i}")
        if i % 2 == 0
        else AIMessage(content="Noted.", id=f"a{i}")
        for i in range(30)
    ]
    result = HistoryPruner(max_tokens=300).prune(msgs)
    out = result.materialize(lambda m: ("summary", m.text), lambda src, m: ("cut", src))
    assert out[0][0] == "summary"
    assert all(o is msgs[i] for o, i in zip(out[1:], result.kept, strict=True))


# ---------------------------------------------------------------- configuration and state


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"max_tokens": 10}, "max_tokens"),
        ({"max_tokens": 1000, "target_tokens": 2000}, "target_tokens"),
        ({"keep_turns": 0}, "keep_turns"),
        ({"max_tokens": 1000, "max_summary_tokens": 600}, "max_summary_tokens"),
        ({"max_tokens": 1000, "max_summary_tokens": 100, "section_tokens": 200}, "section_tokens"),
        ({"summary_role": "tool"}, "summary_role"),
    ],
)
def test_bad_settings_raise_with_name_and_value(kwargs: dict[str, object], name: str) -> None:
    with pytest.raises(HistoryConfigError) as err:
        HistoryPruner(**kwargs)  # type: ignore[arg-type]
    assert err.value.name == name and isinstance(err.value, ValueError)


def test_settings_come_from_keywords_then_env_then_defaults(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert HistoryPruner().max_tokens == 8000
    monkeypatch.setenv("GRAPHTHRIFT_HISTORY_MAX_TOKENS", "3000")
    monkeypatch.setenv("GRAPHTHRIFT_HISTORY_KEEP_TURNS", "4")
    pruner = HistoryPruner()
    assert (pruner.max_tokens, pruner.keep_turns, pruner.target_tokens) == (3000, 4, 1500)
    assert HistoryPruner(max_tokens=5000).max_tokens == 5000
    monkeypatch.setenv("GRAPHTHRIFT_HISTORY_MAX_TOKENS", "lots")
    with pytest.raises(HistoryConfigError):
        HistoryPruner()


def test_state_round_trips_through_json() -> None:
    result = HistoryPruner(max_tokens=300).prune(chat(12))
    data = json.loads(json.dumps(result.state.to_dict()))
    assert HistoryState.from_dict(data) == result.state
    assert HistoryState.from_dict(None) == HistoryState()
    with pytest.raises(HistoryStateError) as err:
        HistoryState.from_dict({"folded": -1})
    assert err.value.field_name == "folded"
    with pytest.raises(HistoryStateError):
        HistoryState.from_dict({"sections": "not a list"})


def test_boundary_is_refound_by_id_when_the_list_changes() -> None:
    pruner = HistoryPruner(max_tokens=300, keep_turns=1)
    msgs = chat(12)
    first = pruner.prune(msgs)
    # Someone deletes two early messages: the boundary follows the folded message's id.
    edited = msgs[:1] + msgs[3:]
    again = pruner.view(edited, first.state)
    assert keys(again.messages) == keys(first.messages)
    # The folded message itself is gone: warn, keep the summary, restart the boundary.
    before = diagnostics.get("history_boundary_lost")
    lost = pruner.view([m for m in msgs if m.id != first.state.folded_through_id], first.state)
    assert diagnostics.get("history_boundary_lost") == before + 1
    assert lost.summary is not None and lost.state.folded == 0


def test_destructive_rewrite_is_a_fixed_point() -> None:
    pruner = HistoryPruner(max_tokens=300, keep_turns=1)
    first = pruner.prune(chat(12))
    rewritten = first.materialize(lambda m: m, lambda src, m: m)
    again = pruner.prune(rewritten, first.state.rebased())
    assert keys(again.messages) == keys(first.messages)
    assert not again.summarized
    assert first.origin.count(None) == 1 and SUMMARY_ID in again.messages[1].id  # type: ignore[operator]


def test_view_never_calls_the_summarizer_and_matches_prune() -> None:
    msgs = chat(12)
    folded = HistoryPruner(max_tokens=300).prune(msgs)
    view = HistoryPruner(max_tokens=300, summarizer=Exploding()).view(msgs, folded.state)
    assert keys(view.messages) == keys(folded.messages)


async def test_async_path_matches_sync() -> None:
    pruner = HistoryPruner(max_tokens=300, keep_turns=1)
    msgs = chat(20)
    sync = pruner.prune(msgs)
    asyn = await pruner.aprune(msgs)
    assert keys(sync.messages) == keys(asyn.messages) and sync.state == asyn.state


def test_prune_history_function() -> None:
    result = prune_history(chat(12), max_tokens=300)
    assert result.summarized and result.tokens_out <= 300


def test_truncate_text_marks_the_cut() -> None:
    text = truncate_text("alpha " * 500, 50)
    assert "tokens truncated]" in text and count_text(text) <= 60


# ---------------------------------------------------------------- summarizers


def test_extractive_keeps_facts_and_drops_pleasantries() -> None:
    msgs = [
        Message("user", "Hi there! How are you today?"),
        Message("assistant", "Great, thanks. How can I help?"),
        Message(
            "user", "Please book a table at Nopa in San Francisco for 4 on May 3rd at 7:30 pm."
        ),
        Message("assistant", "Done. Your confirmation code is NX-4471."),
        Message("user", "Thank you so much!"),
    ]
    out = ExtractiveSummarizer().summarize(msgs, "", 60)
    for fact in ("Nopa", "San Francisco", "4", "May 3rd", "7:30 pm", "NX-4471"):
        assert fact in out
    assert "How are you" not in out and "Thank you" not in out
    assert out.startswith("User: ")


def test_extractive_respects_the_budget_and_prefers_facts() -> None:
    msgs = [
        Message("user", f"Fact {i}: order A-{i}00 ships to Berlin on March {i + 1}th.")
        for i in range(20)
    ]
    msgs.insert(
        10, Message("assistant", "I think the weather is nice and I like talking with you.")
    )
    out = ExtractiveSummarizer().summarize(msgs, "", 40)
    assert count_text(out) <= 40
    assert "weather" not in out and "A-" in out


def test_extractive_skips_what_the_summary_already_says() -> None:
    s = ExtractiveSummarizer()
    msgs = [
        Message("user", "Ship order A-100 to Berlin."),
        Message("user", "Invoice ana@example.com."),
    ]
    first = s.summarize(msgs[:1], "", 50)
    second = s.summarize(msgs, first, 50)
    assert "A-100" not in second and "ana@example.com" in second


def test_extractive_compaction_shrinks_and_keeps_recent_facts() -> None:
    sections = [
        f"User: Order A-{i} ships to Berlin on March {i + 1}th.\nAssistant: Confirmed A-{i}."
        for i in range(15)
    ]
    out = ExtractiveSummarizer().summarize(
        [Message("system", s, name=SECTION_NAME) for s in sections], "", 60
    )
    assert count_text(out) <= 60
    assert "A-14" in out and "A-0 " not in out


def test_extractive_flattens_json_tool_results() -> None:
    calls = (ToolCall("c1", "get_booking", '{"id": "BK-7"}'),)
    msgs = [
        Message("assistant", "", calls),
        Message(
            "tool",
            json.dumps({"booking": {"id": "BK-7", "city": "Oslo", "guests": 3}}),
            tool_call_id="c1",
            name="get_booking",
        ),
    ]
    out = ExtractiveSummarizer().summarize(msgs, "", 80)
    assert "get_booking" in out and "city=Oslo" in out and "guests=3" in out


def test_render_transcript_labels_roles_and_tool_calls() -> None:
    text = render_transcript(
        [
            Message("user", "hi"),
            Message("assistant", "", (ToolCall("1", "f", '{"a":1}'),)),
            Message("tool", "42", name="f"),
        ]
    )
    assert text.splitlines() == ["User: hi", 'Assistant: called f({"a":1})', "Tool f: 42"]


def test_both_summarizers_satisfy_the_protocol() -> None:
    assert isinstance(ExtractiveSummarizer(), Summarizer)
    assert isinstance(ChatModelSummarizer(GenericFakeChatModel(messages=iter(["x"]))), Summarizer)


class RecordingModel(GenericFakeChatModel):
    """A LangChain fake model that remembers the kwargs (e.g. max_tokens) it was bound with."""

    seen: list[dict[str, Any]]

    def _generate(self, messages, stop=None, run_manager=None, **kwargs):  # type: ignore[no-untyped-def]
        self.seen.append({"kwargs": kwargs, "messages": messages})
        return super()._generate(messages, stop=stop, run_manager=run_manager, **kwargs)


def test_chat_model_summarizer_binds_max_tokens_and_prompts_with_the_transcript() -> None:
    model = RecordingModel(messages=iter(["- Nopa, 4 people, May 3rd"]), seen=[])
    summarizer = ChatModelSummarizer(model, max_output_tokens=48)
    text = summarizer.summarize(
        [Message("user", "Book Nopa for 4 on May 3rd.")], "Earlier: user is Ana.", 100
    )
    assert text == "- Nopa, 4 people, May 3rd"
    call = model.seen[-1]
    assert call["kwargs"].get("max_tokens") == 48  # min(max_output_tokens, section budget)
    prompt = call["messages"]
    assert "48 tokens" in prompt[0].content
    assert (
        "Earlier: user is Ana." in prompt[1].content
        and "User: Book Nopa for 4 on May 3rd." in prompt[1].content
    )


def test_chat_model_summarizer_compaction_prompt() -> None:
    model = RecordingModel(messages=iter(["short"]), seen=[])
    ChatModelSummarizer(model).summarize([Message("system", "A\nB", name=SECTION_NAME)], "", 30)
    assert model.seen[-1]["messages"][0].content.startswith("Rewrite the conversation summary")


def test_chat_model_summarizer_in_the_pruner() -> None:
    pruner = HistoryPruner(
        max_tokens=300, summarizer=ChatModelSummarizer(usage_model("Summary: facts kept."))
    )
    result = pruner.prune(chat(12))
    assert result.summary is not None and "Summary: facts kept." in result.summary.text


def test_chat_model_summarizer_rejects_non_models() -> None:
    with pytest.raises(TypeError):
        ChatModelSummarizer(object())
    with pytest.raises(ValueError):
        ChatModelSummarizer(GenericFakeChatModel(messages=iter([])), max_output_tokens=0)


def test_conversations_jsonl_reader_keeps_stated_facts_and_names_bad_lines(tmp_path: Any) -> None:
    from graphthrift.bench._data_history import ConversationFormatError, load_conversations_jsonl

    good = {
        "id": "c1",
        "turns": [
            {
                "role": "user",
                "content": "Book Nopa for May 3rd.",
                "facts": ["Nopa", "May 3rd", "False"],
            },
            {"role": "assistant", "content": "Booked."},
        ],
    }
    path = tmp_path / "conversations.jsonl"
    path.write_text(json.dumps(good) + "\n\n", encoding="utf-8")
    [conv] = load_conversations_jsonl(path)
    assert conv.has_facts and conv.turns[0].facts == ("Nopa", "May 3rd")  # only what is said
    path.write_text(json.dumps(good) + "\n" + json.dumps({"id": "c2", "turns": [{"role": "bot"}]}))
    with pytest.raises(ConversationFormatError) as err:
        load_conversations_jsonl(path)
    assert err.value.line == 2 and "role" in str(err.value)
    for starts in ([0, 2], "0", [True]):  # past the last turn, not a list, not an index
        path.write_text(json.dumps({**good, "session_starts": starts}) + "\n")
        with pytest.raises(ConversationFormatError, match="session_starts"):
            load_conversations_jsonl(path)
    path.write_text(json.dumps({**good, "session_starts": [1, 0, 1]}) + "\n")
    assert load_conversations_jsonl(path)[0].session_starts == (0, 1)


def test_extractive_facts_style_keeps_values_exact_and_dense() -> None:
    text = (
        "Sure, please confirm: booking a table for 2 people at Bird Dog in Palo Alto at "
        "11:30 AM on March 1st. The address is 7 Mount Lassen Drive # D110, call 707-782-1948, "
        "and the fee is $25.00 per day."
    )
    out = ExtractiveSummarizer().summarize([Message("assistant", text)], "", 200)
    for fact in (
        "2 people",
        "Bird Dog in Palo Alto",
        "11:30 AM",
        "March 1st",
        "7 Mount Lassen Drive # D110",
        "707-782-1948",
        "$25.00",
    ):
        assert fact in out, (fact, out)
    assert count_text(out) < count_text(text) * 0.8  # denser than the message itself
    assert out.startswith("Assistant: ")


def test_extractive_facts_style_keeps_titles_and_addresses_whole() -> None:
    msgs = [
        Message("assistant", "What about Close Encounters of the Third Kind? It is rated 4.6."),
        Message("assistant", "It is at 1003 Coast Boulevard, La Jolla, California 92037."),
        Message("user", "I want the car till the 2nd, at six in the evening."),
    ]
    out = ExtractiveSummarizer().summarize(msgs, "", 200)
    for fact in (
        "Close Encounters of the Third Kind",
        "4.6",
        "1003 Coast Boulevard, La Jolla, California 92037",
        "the 2nd",
        "six in the evening",
    ):
        assert fact in out, (fact, out)


def test_extractive_facts_style_keeps_lower_case_names_after_a_naming_cue() -> None:
    msgs = [
        Message("assistant", "There is an alarm for 4:30 pm titled piano time."),
        Message("assistant", "Creating an alarm at 8 am with the name Shuttle to work."),
        Message("user", "Add one called leave for home, and I called the bank already."),
    ]
    out = ExtractiveSummarizer().summarize(msgs, "", 200)
    for fact in ("4:30 pm", "piano time", "8 am", "Shuttle to work", "leave for home"):
        assert fact in out, (fact, out)
    assert "the bank" not in out  # "called the ..." is a verb, not a name


def test_extractive_facts_style_fills_its_budget_and_skips_restated_values() -> None:
    names = ["Nopa", "Zuni", "Tartine", "Delfina", "Oakland", "Berkeley", "Fremont", "Napa",
             "Sonoma", "Davis", "Fresno", "Modesto", "Salinas", "Monterey"]  # fmt: skip
    out = ExtractiveSummarizer().summarize(
        [Message("user", f"What about {name}?") for name in names], "", 30
    )
    assert 27 <= count_text(out) <= 30  # the rendered text fills it, not per-unit estimates
    booked = [
        Message("user", "What about Nopa?"),
        Message("assistant", "Booked: Nopa in San Francisco on March 1st at 8 pm."),
    ]
    out = ExtractiveSummarizer().summarize(booked, "", 24)
    assert "March 1st at 8 pm" in out
    assert out.lower().count("nopa") == 1  # "Nopa" alone is restated by the booking


def test_extractive_facts_style_drops_superseded_values_first() -> None:
    msgs = [Message("user", f"Book it for {h} pm.") for h in range(1, 10)]
    msgs.append(Message("user", "Address: Nopa, 560 Divisadero Street, San Francisco."))
    out = ExtractiveSummarizer().summarize(msgs, "", 24)
    assert count_text(out) <= 24
    assert "9 pm" in out and "560 Divisadero Street" in out
    assert "1 pm" not in out  # the earliest time, superseded by later ones, goes first


def test_extractive_facts_style_skips_values_the_summary_has() -> None:
    s = ExtractiveSummarizer()
    msg = Message("user", "Please fly on May 3rd. My seat is 14C.")
    out = s.summarize([msg], "User: May 3rd", 50)
    assert "May 3rd" not in out and "14C" in out


def test_extractive_sentences_style_is_still_available() -> None:
    s = ExtractiveSummarizer(style="sentences")
    out = s.summarize([Message("user", "Hi! Book a table at Nopa for 4 on May 3rd.")], "", 40)
    assert out.startswith("User: Book") and "Nopa for 4 on May 3rd." in out and "Hi" not in out
    with pytest.raises(ValueError):
        ExtractiveSummarizer(style="bullets")  # type: ignore[arg-type]
