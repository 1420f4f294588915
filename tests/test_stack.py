"""The savings-stack harness: stack rows in order, cost from the ledger, a PNG written."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from graphthrift.bench import stack
from graphthrift.bench._data import DataSetMissing, using_data_dir
from graphthrift.bench._workload import SIZES, build_workload


def test_workload_is_deterministic_and_has_every_segment() -> None:
    a, b = build_workload(quick=True, limit=3), build_workload(quick=True, limit=3)
    assert [i.text for i in a.faq] == [i.text for i in b.faq]
    assert a.faq and a.rag and a.chat and a.agent
    assert len(a.oracle) > 0


def test_workload_sizes_grow_from_quick_to_full() -> None:
    for key in ("faq", "rag", "chat", "agent"):
        assert SIZES["quick"][key] <= SIZES["default"][key] <= SIZES["full"][key]
    default = build_workload()
    assert len(default.faq) == SIZES["default"]["faq"]
    assert default.source.endswith("data")  # real data, not the synthetic sample


def test_workload_without_data_names_the_missing_set(tmp_path: Path) -> None:
    with using_data_dir(tmp_path), pytest.raises(DataSetMissing) as caught:
        build_workload(quick=True)
    assert caught.value.dataset == "banking77" and "--data" in str(caught.value)
    sample = build_workload(quick=True, sample=True)  # only when asked for
    assert sample.source == "bundled synthetic sample" and sample.faq


def test_stack_contract_on_a_tiny_workload(store: Any, tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    stack.add_arguments(parser)
    args = parser.parse_args(["--limit", "3", "--png", str(tmp_path / "s.png")])
    args.quick = True
    args.json = str(tmp_path / "stack.json")
    args.url = store.url
    out = stack.run(args, Console(quiet=True))
    rows = out["stack"]
    assert [r["layer"] for r in rows] == list(stack.STEPS)
    for r in rows:
        assert set(r) >= {"layer", "cost_usd", "saved_fraction", "quality"}
    details = {d["step"]: d for d in out["steps"]}
    for r in rows:  # cost is the ledger's, per segment and in total
        assert r["cost_usd"] == details[r["layer"]]["cost_usd"] > 0
        assert abs(sum(details[r["layer"]]["by_segment"].values()) - r["cost_usd"]) < 1e-5
        assert details[r["layer"]]["unpriced"] == 0
    assert rows[0]["saved_fraction"] == 0.0
    assert rows[-1]["cost_usd"] < rows[0]["cost_usd"]
    assert rows[-1]["saved_fraction"] > 0
    assert (tmp_path / "s.png").stat().st_size > 0
    assert (tmp_path / "stack.json").is_file()
    assert out["which_layers_carry_savings"]
