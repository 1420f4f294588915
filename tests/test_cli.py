"""The graphthrift command: help, report (table and JSON), bench contract."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from graphthrift import Ledger, LedgerRecord, Store
from graphthrift.cli import main


def test_help_lists_every_subcommand() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "graphthrift.cli", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0
    for word in ("report", "bench"):
        assert word in out.stdout
    bench = subprocess.run(
        [sys.executable, "-m", "graphthrift.cli", "bench", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "ledger" in bench.stdout
    for option in ("--quick", "--full", "--data", "--traffic"):
        assert option in bench.stdout


def test_report_json_rows(
    ledger: Ledger, store: Store, tenant: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ledger.record_many(
        [
            LedgerRecord(
                tenant_id=tenant,
                node="agent",
                model="gpt-4o-mini",
                input_tokens=1000,
                output_tokens=100,
                cached_tokens=200,
            ),
            LedgerRecord(
                tenant_id=tenant,
                node="agent",
                model="gpt-4o-mini",
                input_tokens=500,
                output_tokens=50,
            ),
            LedgerRecord(
                tenant_id=tenant,
                node="tools",
                model="gpt-4o",
                input_tokens=800,
                output_tokens=10,
                success=False,
                error_type="timeout",
                cost_usd=0.0,
            ),
        ]
    )
    ledger.flush()
    out = tmp_path / "report.json"
    assert (
        main(
            [
                "--url",
                store.url,
                "report",
                "--by",
                "tenant_id,node",
                "--tenant-id",
                tenant,
                "--json",
                str(out),
            ]
        )
        == 0
    )
    rows = {r["node"]: r for r in json.loads(out.read_text())["rows"]}
    assert rows["agent"]["requests"] == 2
    assert rows["agent"]["input_tokens"] == 1500 and rows["agent"]["cached_tokens"] == 200
    assert rows["agent"]["cost_usd"] > 0 and rows["agent"]["success_rate"] == 1.0
    assert rows["tools"]["success_rate"] == 0.0
    for row in rows.values():
        assert {
            "tenant_id",
            "node",
            "requests",
            "input_tokens",
            "output_tokens",
            "cached_tokens",
            "cost_usd",
            "success_rate",
        } <= set(row)
    assert "agent" in capsys.readouterr().out


def test_report_rejects_unknown_keys_and_bad_dates(
    store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--url", store.url, "report", "--by", "colour"]) == 1
    assert "cannot report by" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--url", store.url, "report", "--since", "last tuesday"])


def test_bench_ledger_quick_writes_the_figures(store: Store, tmp_path: Path) -> None:
    out = tmp_path / "ledger.json"
    assert (
        main(
            [
                "--url",
                store.url,
                "bench",
                "ledger",
                "--quick",
                "--json",
                str(out),
                "--calls",
                "300",
                "--records",
                "2000",
                "--report-rows",
                "5000",
            ]
        )
        == 0
    )
    figures = json.loads(out.read_text())
    assert figures["write"]["records"] == 2000 and figures["write"]["records_per_s"] > 0
    assert {"cost_tagger", "usage_metadata_handler", "ratio_median"} <= set(
        figures["tagger_overhead_us"]
    )
    assert figures["report"]["rows"] == 5000 and figures["report"]["max_s"] > 0


def test_bench_route_quick_compares_both_classifier_embedders(tmp_path: Path) -> None:
    out = tmp_path / "route.json"
    assert main(["bench", "route", "--quick", "--json", str(out)]) == 0
    figures = json.loads(out.read_text())
    assert {"n", "cheap_fraction", "escalation_rate", "quality", "overhead_ms"} <= set(figures)
    static, transformer = figures["classifier"], figures["classifier_transformer"]
    assert static["embedder"] == "all-MiniLM-L6-v2-onnx-int8-static"
    assert transformer["embedder"] == "all-MiniLM-L6-v2-onnx-int8"
    for row in (static, transformer):
        assert row["n"] == figures["n"] and row["quality"] > 0.5  # relative to always-strong
        assert 0.0 <= row["cheap_fraction"] <= 1.0 and row["overhead_ms"]["p95"] > 0
    assert static["overhead_p95_vs_transformer"] is not None
