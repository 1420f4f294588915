"""``graphthrift bench history`` on a conversations file, and the fold-schedule ceiling."""

from __future__ import annotations

import argparse
import io
import itertools
import json
import random
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from graphthrift.bench._data import data_dir
from graphthrift.bench._data_history import Conversation, Turn, load_conversations_jsonl
from graphthrift.bench.history import (
    _apart,
    _Full,
    _prompt_tokens,
    _replay,
    _reply_tokens,
    _Tally,
    as_langchain,
    fold_ceiling,
    prompt_points,
    run,
)
from graphthrift.bench.longthread import LONG_THREAD_SEED, build_long_threads
from graphthrift.cli import main
from graphthrift.errors import ConfigError
from graphthrift.history import HistoryPruner
from graphthrift.history.pricing import (
    DEFAULT_PRICE_MODELS,
    PromptTurn,
    effective_cost_usd,
    effective_saved_fraction,
    turns_from_messages,
)
from graphthrift.summarize import ExtractiveSummarizer
from graphthrift.text import TOKENS_REPLY_PRIMING, count_text

PLACES = ["Nopa", "Little Hunan", "The Foundry", "Zuni Cafe", "State Bird"]


def _conversations(path: Path, n: int = 24, seed: int = 3) -> Path:
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8") as fh:
        for k in range(n):
            turns = []
            for t in range(rng.randint(10, 14)):
                place, people, day = rng.choice(PLACES), rng.randint(2, 9), rng.randint(1, 28)
                fact_day = f"March {day}th"
                turns.append(
                    {
                        "role": "user",
                        "content": f"Could you find a table at {place} for {people} people on "
                        f"{fact_day}? We would like somewhere quiet, thanks a lot.",
                        "facts": [place, fact_day],
                    }
                )
                turns.append(
                    {
                        "role": "assistant",
                        "content": f"Sure, I have checked {place} and there is room on {fact_day} "
                        f"in the evening. Shall I book it for turn {t}?",
                    }
                )
            fh.write(json.dumps({"id": f"c{k}", "turns": turns}) + "\n")
    return path


def test_bench_history_writes_the_design_figures(tmp_path: Path) -> None:
    data = _conversations(tmp_path / "convs.jsonl")
    out = tmp_path / "history.json"
    assert (
        main(
            [
                "bench",
                "history",
                "--conversations",
                str(data),
                "--max-tokens",
                "256",
                "--budgets",
                "256,8192",
                "--long",
                "0",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    figures = json.loads(out.read_text())
    for key in (
        "n_conversations",
        "tokens_full",
        "tokens_pruned",
        "saved_fraction",
        "fact_retention",
        "prefix_stability",
        "summary_tokens",
    ):
        assert key in figures
        for peer in (
            "full_history",
            "trim_messages",
            "langmem_summarization",
            "summarization_middleware",
        ):
            assert key in figures["baselines"][peer]
    assert figures["n_conversations"] == 24
    assert figures["tokens_pruned"] < figures["tokens_full"]
    assert 0.0 < figures["fact_retention"] <= 1.0
    assert figures["baselines"]["full_history"]["saved_fraction"] == 0.0
    assert figures["baselines"]["full_history"]["fact_retention_all"] == 1.0
    # facts counted over everything stated, verbatim turns included: at least the dropped ones'
    assert figures["fact_retention"] <= figures["fact_retention_all"] < 1.0
    wide = {p["max_tokens"]: p for p in figures["curve"]}[8192]["graphthrift"]
    assert wide["fact_retention_all"] == 1.0 and wide["fact_retention"] is None  # no fold
    # our saving can never beat the ceiling of any fold schedule at our own stability
    ceiling = fold_ceiling(
        load_conversations_jsonl(data), summary_tokens=(0,), stability=figures["prefix_stability"]
    )["points"][0]
    assert ceiling["prefix_stability"] >= figures["prefix_stability"]
    assert figures["saved_fraction"] <= ceiling["saved_fraction"] + 1e-9
    assert figures["bound"]["points"][0]["summary_tokens"] == 0


def test_fold_bound_trades_savings_for_stability(tmp_path: Path) -> None:
    convs = load_conversations_jsonl(_conversations(tmp_path / "c.jsonl", n=8))
    loose = fold_ceiling(convs, summary_tokens=(0, 60), stability=0.5)["points"]
    strict = fold_ceiling(convs, summary_tokens=(0, 60), stability=0.95)["points"]
    never = fold_ceiling(convs, summary_tokens=(0,), stability=1.0)["points"][0]
    assert never["saved_fraction"] == pytest.approx(0.0) and never["prefix_stability"] == 1.0
    for a, b in zip(loose, strict, strict=True):
        assert a["prefix_stability"] >= 0.5 and b["prefix_stability"] >= 0.95
        assert a["saved_fraction"] >= b["saved_fraction"] > 0.0
    assert loose[0]["saved_fraction"] > loose[1]["saved_fraction"]  # a summary costs tokens


def _long_conversation(path: Path, turns: int = 12) -> Path:
    """One conversation whose prompts pass the providers' 1,024-token cache minimum."""
    rng = random.Random(5)
    words = [
        "table",
        "booking",
        "evening",
        "quiet",
        "garden",
        "menu",
        "window",
        "party",
        "dessert",
        "wine",
    ]
    rows = []
    for t in range(turns):
        filler = " ".join(rng.choice(words) for _ in range(120))
        place = PLACES[t % len(PLACES)]
        rows.append({"role": "user", "content": f"Turn {t}: {place}. {filler}", "facts": [place]})
        rows.append({"role": "assistant", "content": f"Noted {place} for turn {t}. {filler}"})
    path.write_text(json.dumps({"id": "long", "turns": rows}) + "\n", encoding="utf-8")
    return path


def _run(data: Path, out: Path, *extra: str) -> dict[str, Any]:
    argv = ["bench", "history", "--conversations", str(data), "--long", "0", "--json", str(out)]
    assert main([*argv, *extra]) == 0
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def test_effective_costs_are_history_pricing_of_the_prompts_sent(tmp_path: Path) -> None:
    data = _long_conversation(tmp_path / "long.jsonl")
    figures = _run(data, tmp_path / "h.json", "--max-tokens", "1500", "--budgets", "")
    conv = load_conversations_jsonl(data)[0]
    history = as_langchain(conv)
    ends = prompt_points(conv)
    replies = [
        sum(count_text(t.content) for t in conv.turns[end : end + 1] if t.role == "assistant")
        for end in ends
    ]
    pruner = HistoryPruner(summarizer=ExtractiveSummarizer(), max_tokens=1500)
    state = None
    ours = []
    for end in ends:
        result = pruner.prune(history[:end], state)
        state = result.state
        ours.append(result.messages)
    full_turns = turns_from_messages([history[:end] for end in ends], output_tokens=replies)
    our_turns = turns_from_messages(ours, output_tokens=replies)
    assert any(t.shared_prefix_tokens >= 1024 for t in full_turns)  # the cache is exercised
    assert figures["price_models"] == list(DEFAULT_PRICE_MODELS)
    for model in DEFAULT_PRICE_MODELS:
        full = effective_cost_usd(full_turns, model)
        mine = effective_cost_usd(our_turns, model)
        assert figures["baselines"]["full_history"]["effective_cost_usd"][model] == pytest.approx(
            full, abs=2e-6
        )
        assert figures["effective_cost_usd"][model] == pytest.approx(mine, abs=2e-6)
        assert figures["effective_saved_fraction"][model] == pytest.approx(
            effective_saved_fraction(mine, full), abs=1e-3
        )
        assert figures["datasets"]["long"]["graphthrift"]["effective_cost_usd"][
            model
        ] == pytest.approx(mine, abs=2e-6)
        for peer, f in figures["baselines"].items():
            assert f["effective_saved_fraction"][model] == pytest.approx(
                1 - f["effective_cost_usd"][model] / full, abs=1e-3
            ), peer
    assert figures["baselines"]["full_history"]["effective_saved_fraction"] == {
        m: 0.0 for m in DEFAULT_PRICE_MODELS
    }


def test_price_model_option_and_priced_summarizer_calls(tmp_path: Path) -> None:
    data = _long_conversation(tmp_path / "long.jsonl")
    figures = _run(
        data,
        tmp_path / "h.json",
        "--max-tokens",
        "1500",
        "--budgets",
        "",
        "--price-model",
        "openai:gpt-4o-mini",
    )
    assert figures["price_models"] == ["openai:gpt-4o-mini"]
    for name in ("long_effective_saved_fraction", "long_fact_retention"):  # --long 0
        unmeasured = figures["targets_issue16"][name]
        assert unmeasured["met"] is None and unmeasured["why"].startswith("not measured"), name
    middleware = figures["baselines"]["summarization_middleware"]
    assert middleware["summarizer_calls"] > 0
    assert set(middleware["effective_cost_usd"]) == {"openai:gpt-4o-mini"}


def test_summarization_middleware_peer_runs_under_create_agent(tmp_path: Path) -> None:
    from langchain.agents.middleware import SummarizationMiddleware
    from langgraph.graph.state import CompiledStateGraph

    from graphthrift.bench._history_middleware import SummarizationMiddlewarePeer
    from graphthrift.text import count_messages, to_message

    conv = load_conversations_jsonl(_long_conversation(tmp_path / "long.jsonl"))[0]
    history = as_langchain(conv)
    counter = lambda ms: count_messages([to_message(m) for m in ms]).tokens  # noqa: E731
    peer = SummarizationMiddlewarePeer(1500, 120, counter)
    assert isinstance(peer.agent, CompiledStateGraph)
    assert isinstance(peer.middleware, SummarizationMiddleware)
    peer.start(history)
    prompts = [peer.step(history[:end]) for end in prompt_points(conv)]
    calls = peer.take_calls()
    assert calls, "the middleware never summarized a 12-turn thread over a 1,500-token budget"
    # the summarizer model got LangChain's own summary prompt, which it is billed for
    assert all(c.input_tokens > 300 and c.output_tokens > 0 for c in calls)
    last = prompts[-1]
    assert last[0].text.startswith("Here is a summary of the conversation to date")
    assert len(last) < len(history)
    # the summary is our extractive one: it keeps the facts of the summarized turns
    summary = last[0].text.split("\n\n", 1)[1]
    assert "Nopa" in summary and "Little Hunan" in summary
    assert "Turn 0" not in "".join(m.text for m in last[1:])
    # the agent's state went on with the recorded replies, not invented ones
    assert prompts[1][-2].text == conv.turns[1].content


def test_long_set_reports_cost_and_retention_by_distance(tmp_path: Path) -> None:
    data = _conversations(tmp_path / "convs.jsonl", n=2)
    argv = ["bench", "history", "--conversations", str(data), "--no-peers", "--budgets", ""]
    assert main([*argv, "--long", "1", "--json", str(tmp_path / "h.json")]) == 0
    long = json.loads((tmp_path / "h.json").read_text())["long"]
    assert long["n_threads"] == 1 and long["n_questions"] > 0
    full, ours = long["policies"]["full_history"], long["policies"]["graphthrift"]
    assert full["fact_retention"] == 1.0  # every answer is still in the full history
    assert full["effective_saved_fraction"] == {m: 0.0 for m in DEFAULT_PRICE_MODELS}
    assert set(ours["fact_retention_by_distance"]) == {"1", "10", "100+"}
    assert sum(ours["questions_by_distance"].values()) == long["n_questions"]
    for model in DEFAULT_PRICE_MODELS:
        saved = 1 - ours["effective_cost_usd"][model] / full["effective_cost_usd"][model]
        assert ours["effective_saved_fraction"][model] == pytest.approx(saved, abs=1e-3)
        assert 0.0 < ours["effective_saved_fraction"][model] < 1.0  # 300+ turns: folding pays
    # with recall: same pricing, the recalled snippets are in the prompts it sent and paid for
    recall = long["policies"]["graphthrift+recall"]
    assert set(recall["fact_retention_by_distance"]) == {"1", "10", "100+"}
    assert sum(recall["questions_by_distance"].values()) == long["n_questions"]
    assert recall["over_budget_fraction"] == 0.0
    for model in DEFAULT_PRICE_MODELS:
        saved = 1 - recall["effective_cost_usd"][model] / full["effective_cost_usd"][model]
        assert recall["effective_saved_fraction"][model] == pytest.approx(saved, abs=1e-3)
    assert long["recall_ms"]["p95"] >= long["recall_ms"]["p50"] > 0


@pytest.fixture(scope="module")
def long384(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One long-set run at 384 tokens, no peers, no sweep: what two tests below read."""
    tmp_path = tmp_path_factory.mktemp("long384")
    data = _conversations(tmp_path / "convs.jsonl", n=2)
    argv = ["bench", "history", "--conversations", str(data), "--no-peers", "--budgets", ""]
    argv += ["--long", "1", "--max-tokens", "384", "--json", str(tmp_path / "h.json")]
    assert main(argv) == 0
    figures = json.loads((tmp_path / "h.json").read_text())
    return figures


def test_long_set_is_priced_with_sessions_a_day_apart_too(long384: dict[str, Any]) -> None:
    """With a day between sessions, each session's first prompt finds the provider's cache
    expired: full history writes its whole head again, a prompt under the cache minimum
    costs what it cost back-to-back, and nothing costs less."""
    figures = long384
    policies = figures["long"]["policies"]
    thread = build_long_threads(1, LONG_THREAD_SEED, root=data_dir())[0]
    conv = thread.as_conversation()
    originals = [(t.role, t.content) for t in conv.turns]
    back_to_back, apart, previous = [], [], 0
    for end in prompt_points(conv):
        tokens = _prompt_tokens(originals[:end])
        shared = _prompt_tokens(originals[:previous]) - TOKENS_REPLY_PRIMING if previous else 0
        turn = PromptTurn(tokens, min(shared, tokens), _reply_tokens(originals, end))
        new_session = any(previous <= s < end for s in thread.session_starts[1:])
        back_to_back.append(turn)
        apart.append(replace(turn, seconds_since_previous=86_400.0) if new_session else turn)
        previous = end
    full = policies["full_history"]
    for model in DEFAULT_PRICE_MODELS:
        assert full["effective_cost_usd"][model] == pytest.approx(
            effective_cost_usd(back_to_back, model), abs=1e-5
        )
        assert full["sessions_apart"]["effective_cost_usd"][model] == pytest.approx(
            effective_cost_usd(apart, model), abs=1e-5
        )
    anthropic = "anthropic:claude-sonnet-4-5"
    assert full["sessions_apart"]["effective_cost_usd"][anthropic] > (
        1.2 * full["effective_cost_usd"][anthropic]
    )
    assert full["sessions_apart"]["gap_seconds"] == 86_400.0
    for name, policy in policies.items():
        for model in DEFAULT_PRICE_MODELS:
            assert policy["sessions_apart"]["effective_cost_usd"][model] >= (
                policy["effective_cost_usd"][model] - 1e-9
            ), name
    # our prompts stay under Anthropic's 1,024-token cache minimum: never cached either way
    ours = policies["graphthrift+recall"]
    assert ours["sessions_apart"]["effective_cost_usd"][anthropic] == pytest.approx(
        ours["effective_cost_usd"][anthropic]
    )
    saved = (
        1
        - ours["effective_cost_usd"][anthropic]
        / (full["sessions_apart"]["effective_cost_usd"][anthropic])
    )
    assert ours["sessions_apart"]["effective_saved_fraction"][anthropic] == pytest.approx(
        saved, abs=1e-3
    )
    target = figures["targets_issue16"]["long_effective_saved_fraction"]
    assert target["value_sessions_apart"] == ours["sessions_apart"]["effective_saved_fraction"]


def test_last_exchange_bounds_what_keeping_the_exchange_can_save(
    long384: dict[str, Any],
) -> None:
    """The long set's reference sends the last three messages from a user's; under the cache
    minimum each of its tokens is billed at list, so no policy that keeps the exchange
    verbatim costs less, and the issue-16 target reports its saving as the ceiling."""
    figures = long384
    policies = figures["long"]["policies"]
    conv = build_long_threads(1, LONG_THREAD_SEED, root=data_dir())[0].as_conversation()
    originals = [(t.role, t.content) for t in conv.turns]
    turns = []
    for end in prompt_points(conv):
        kept = originals[max(0, end - 3) : end]
        while kept[0][0] != "user":
            kept = kept[1:]
        tokens = _prompt_tokens(kept)
        assert tokens < 1024  # under both providers' cache minimum: nothing is read or written
        turns.append(PromptTurn(tokens, 0, _reply_tokens(originals, end)))
    reference = policies["last_exchange"]
    full = policies["full_history"]
    target = figures["targets_issue16"]["long_effective_saved_fraction"]
    for model in DEFAULT_PRICE_MODELS:
        cost = effective_cost_usd(turns, model)
        assert reference["effective_cost_usd"][model] == pytest.approx(cost, abs=1e-6)
        ceiling = 1 - cost / full["effective_cost_usd"][model]
        assert reference["effective_saved_fraction"][model] == pytest.approx(ceiling, abs=1e-4)
        assert target["ceiling_last_exchange"][model] == pytest.approx(ceiling, abs=1e-4)
        for name in ("graphthrift", "graphthrift+recall"):  # both keep the exchange verbatim
            assert policies[name]["effective_cost_usd"][model] >= cost - 1e-9, (name, model)
    assert reference["over_budget_fraction"] == 0.0
    # the run had no sweep and no peers: those targets say so rather than go missing
    for name in ("no_fold_budget_at_most_full_cost", "no_budgeted_peer_dominates"):
        unmeasured = figures["targets_issue16"][name]
        assert unmeasured["met"] is None and unmeasured["why"].startswith("not measured"), name


def test_last_exchange_sends_a_suffix_from_a_user_message_ending_on_the_request() -> None:
    """Whatever the roles, the reference sends at most the last three messages, from a user's,
    and always the latest request: a subset of the last exchange, so its cost still caps."""
    from graphthrift.bench.history import _LastExchange

    reference = _LastExchange()
    for n in range(1, 7):
        for bits in itertools.product(("user", "assistant"), repeat=n - 1):
            roles = [*bits, "user"]
            conv = Conversation(
                "roles", "test", tuple(Turn(r, f"{r} message {i}") for i, r in enumerate(roles))
            )
            history = as_langchain(conv)
            sent = [m.text for m in reference.step(history)]
            texts = [t.content for t in conv.turns]
            assert 1 <= len(sent) <= 3, roles
            assert sent == texts[len(texts) - len(sent) :], roles  # a suffix, in order
            assert sent[0].startswith("user"), roles
            if roles[-3:] == ["user", "assistant", "user"]:
                assert len(sent) == 3, roles


def test_the_ceiling_is_given_only_under_each_price_model_s_cache_minimum() -> None:
    """Above the cache minimum a prompt can be read from the cache, the reference no longer
    caps anything, and the target carries no ceiling for that price model."""
    from graphthrift.bench.history import _issue16_targets

    models = list(DEFAULT_PRICE_MODELS)
    saved = dict(zip(models, (0.79, 0.95), strict=True))
    judged = {
        "effective_saved_fraction": dict.fromkeys(models, 0.3),
        "sessions_apart": {"effective_saved_fraction": dict.fromkeys(models, 0.6)},
        "fact_retention": 0.9,
        "fact_retention_by_distance": {"1": 1.0, "10": 0.9, "100+": 0.8},
    }
    for budget, expect in ((384, saved), (1024, {}), (2048, {})):
        result = {
            "long": {
                "max_tokens": budget,
                "policies": {
                    "graphthrift": judged,
                    "last_exchange": {**judged, "effective_saved_fraction": saved},
                },
            }
        }
        target = _issue16_targets(result, models)["long_effective_saved_fraction"]
        assert target["ceiling_last_exchange"] == expect, budget
        assert target["target_within_ceiling"] == {m: v >= 0.8 for m, v in expect.items()}


def test_a_prompt_begins_a_session_when_a_session_starts_among_its_new_turns() -> None:
    """Sessions may open with the assistant, share a prompt, or hold no prompt at all; the
    flag marks the first prompt that carries a new session's turns, and stays beside its
    prompt when tallies are added up."""
    t = lambda role, text: Turn(role, text, ())  # noqa: E731
    turns = (
        *(t("user", "a"), t("assistant", "b")),  # session 0: prompt at 1
        *(t("assistant", "hello"), t("user", "c"), t("user", "d"), t("assistant", "e")),
        t("user", "f"),  # session at 6 runs into the one at 7: one prompt (8) for both
        *(t("user", "g"), t("assistant", "h")),
        t("assistant", "no prompt in this session"),  # session at 9
        *(t("user", "i"), t("assistant", "j")),  # session at 10: prompt at 11
        *(t("user", "k"), t("assistant", "l")),  # same session: prompt at 13
    )
    conv = Conversation("s", "test", turns, session_starts=(0, 2, 6, 7, 9, 10))
    assert prompt_points(conv) == [1, 5, 8, 11, 13]
    tally = _Tally()
    _replay(_Full(), conv, as_langchain(conv), tally, timed=False, budget=10**6)
    assert tally.session_start == [False, True, True, True, False]
    other = _Tally()
    _replay(
        _Full(),
        replace(conv, session_starts=()),
        as_langchain(conv),
        other,
        timed=False,
        budget=10**6,
    )
    assert other.session_start == [False] * 5
    both = _Tally()
    both.add(tally)
    both.add(other)
    apart = _apart(both)
    assert len(apart) == len(both.turns) == 10
    assert [p.seconds_since_previous > 0 for p in apart] == [*tally.session_start, *[False] * 5]


def test_long_seed_replays_a_held_out_long_set(tmp_path: Path) -> None:
    """``--long-seed`` builds another long set (for settings tuned on the default seed) and
    the JSON names the seed it measured."""
    data = _conversations(tmp_path / "convs.jsonl", n=2)
    argv = ["bench", "history", "--conversations", str(data), "--no-peers", "--budgets", ""]
    sets = {}
    for seed in (LONG_THREAD_SEED, LONG_THREAD_SEED + 1):
        out = tmp_path / f"h{seed}.json"
        assert main([*argv, "--long", "1", "--long-seed", str(seed), "--json", str(out)]) == 0
        sets[seed] = json.loads(out.read_text())["long"]
        assert sets[seed]["seed"] == seed
    first, second = sets.values()
    assert (first["n_turns"], first["n_questions"]) != (second["n_turns"], second["n_questions"])


def test_an_unknown_price_model_is_refused_before_the_replay(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _conversations(tmp_path / "convs.jsonl", n=1)
    argv = ["bench", "history", "--conversations", str(data), "--long", "0", "--budgets", ""]
    out = tmp_path / "h.json"
    assert main([*argv, "--price-model", "openai:no-such-model", "--json", str(out)]) != 0
    assert "openai:no-such-model" in capsys.readouterr().out
    assert not out.exists()
    with pytest.raises(ConfigError, match="no-such-model"):
        run(
            argparse.Namespace(
                conversations=data, price_models=["openai:no-such-model"], limit=None
            ),
            Console(file=io.StringIO()),
        )


def test_piped_output_keeps_the_tables_whole(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rich cuts a table to 80 columns when the output is no terminal ("sa…", "0.…"); the
    command prints at PIPED_WIDTH to a pipe or a log instead, and COLUMNS still wins."""
    from graphthrift.cli import PIPED_WIDTH

    data = _conversations(tmp_path / "convs.jsonl", n=2)
    argv = ["bench", "history", "--conversations", str(data), "--no-peers", "--budgets", ""]
    argv += ["--long", "0", "--json", str(tmp_path / "h.json")]
    monkeypatch.delenv("COLUMNS", raising=False)
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "fact retention" in out and "prefix stable" in out
    assert max(len(line) for line in out.splitlines()) <= PIPED_WIDTH
    monkeypatch.setenv("COLUMNS", "80")
    assert main(argv) == 0
    assert "prefix stable" not in capsys.readouterr().out  # 80 columns, as asked: cut
