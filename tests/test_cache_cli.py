"""``graphthrift cache tune`` and the pairs loader, called through their functions."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

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
         "--plot", str(tmp_path / "curve.png"), "--json", str(out)]
    )  # fmt: skip
    figures = run(args, Console(file=open(tmp_path / "log.txt", "w")))  # noqa: SIM115
    saved = json.loads(out.read_text())
    assert {"threshold", "precision", "recall"} <= set(saved)
    assert saved["precision"] == 1.0 and figures["threshold"] == saved["threshold"]
    assert (tmp_path / "curve.png").stat().st_size > 1000
