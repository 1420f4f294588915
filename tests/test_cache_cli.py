"""``graphthrift cache tune`` and the pairs loader, called through their functions."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
from rich.console import Console

from graphthrift.bench.cache import SAMPLE, load_pairs
from graphthrift.cli.cache import add_parser, run


def test_cache_tune_writes_threshold_json_and_plot(tmp_path: Path) -> None:
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(
        "".join(json.dumps({"text_a": a, "text_b": b, "label": y}) + "\n" for a, b, y in SAMPLE)
    )
    assert load_pairs(pairs) == SAMPLE
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command"))
    out = tmp_path / "tune.json"
    args = parser.parse_args(
        ["cache", "tune", "--pairs", str(pairs), "--target-precision", "1.0",
         "--confidence", "0", "--plot", str(tmp_path / "curve.png"), "--json", str(out)]
    )  # fmt: skip
    figures = run(args, Console(file=open(tmp_path / "log.txt", "w")))  # noqa: SIM115
    saved = json.loads(out.read_text())
    assert {"threshold", "precision", "recall"} <= set(saved)
    assert saved["precision"] == 1.0 and figures["threshold"] == saved["threshold"]
    assert (tmp_path / "curve.png").stat().st_size > 1000


def test_cache_tune_accepts_rule_band_and_confidence(tmp_path: Path) -> None:
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(
        "".join(json.dumps({"text_a": a, "text_b": b, "label": y}) + "\n" for a, b, y in SAMPLE)
    )
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command"))
    defaults = parser.parse_args(["cache", "tune", "--pairs", str(pairs)])
    assert (defaults.rule, defaults.band, defaults.confidence) == ("local", 0.02, 0.95)
    log = Console(file=open(tmp_path / "log.txt", "w"))  # noqa: SIM115
    saved = {}
    for rule in ("cumulative", "local"):
        out = tmp_path / f"{rule}.json"
        args = parser.parse_args(
            ["cache", "tune", "--pairs", str(pairs), "--target-precision", "1.0",
             "--rule", rule, "--band", "0.05", "--confidence", "0",
             "--plot", str(tmp_path / "curve.png"), "--json", str(out)]
        )  # fmt: skip
        run(args, log)
        saved[rule] = json.loads(out.read_text())
        assert saved[rule]["rule"] == rule and saved[rule]["band"] == 0.05
        assert saved[rule]["confidence"] == 0.0 and saved[rule]["precision"] == 1.0
    # six pairs: too few for any band to stand alone, so both rules agree here
    assert saved["local"]["threshold"] == saved["cumulative"]["threshold"]
    with pytest.raises(SystemExit):
        parser.parse_args(["cache", "tune", "--pairs", str(pairs), "--rule", "median"])


def test_cache_tune_shows_what_the_lexical_guard_rejects(tmp_path: Path) -> None:
    rows = [
        *SAMPLE,
        ("Is the store open on Sunday?", "Is the store open on Monday?", 0),
        ("Can I send 50 euros?", "Can I send 500 euros?", 0),
        ("My card works abroad", "My card does not work abroad", 0),
    ]
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(
        "".join(json.dumps({"text_a": a, "text_b": b, "label": y}) + "\n" for a, b, y in rows)
    )
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        ["cache", "tune", "--pairs", str(pairs), "--target-precision", "0.5",
         "--confidence", "0", "--rule", "cumulative", "--plot", str(tmp_path / "c.png")]
    )  # fmt: skip
    figures = run(args, Console(file=open(tmp_path / "log.txt", "w")))  # noqa: SIM115
    guard = figures["lexical_guard"]
    assert guard["threshold"] == figures["threshold"]
    assert guard["without_guard"]["precision"] == figures["precision"]
    # the three meaning-changing pairs are served without the guard, refused with it
    assert guard["without_guard"]["hits"] - guard["with_guard"]["hits"] == guard["rejected_hits"]
    assert guard["rejected_wrong"] == 3
    assert {"dates", "numbers", "negation"} <= set(guard["rejected_by_reason"])
    assert guard["with_guard"]["precision"] > guard["without_guard"]["precision"]
