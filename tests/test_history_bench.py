"""``graphthrift bench history`` on a conversations file, and the fold-schedule ceiling."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from graphthrift.bench._data_history import load_conversations_jsonl
from graphthrift.bench.history import fold_ceiling
from graphthrift.cli import main

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
        for peer in ("full_history", "trim_messages", "langmem_summarization"):
            assert key in figures["baselines"][peer]
    assert figures["n_conversations"] == 24
    assert figures["tokens_pruned"] < figures["tokens_full"]
    assert 0.0 < figures["fact_retention"] <= 1.0
    assert figures["baselines"]["full_history"]["saved_fraction"] == 0.0
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
