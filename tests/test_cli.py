"""The graphthrift command: help, report (table and JSON), bench contract."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import make_url

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


def test_a_benchmark_s_help_leaves_out_the_maintainers_note(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The module docstring is the help; its "Long because:" paragraph is for maintainers."""
    with pytest.raises(SystemExit):
        main(["bench", "history", "--help"])
    out = capsys.readouterr().out
    assert "what each pruning policy would send" in out
    assert "Long because" not in out


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


# ---------------------------------------------------------------- report: which database (issue 11.10)


def test_report_refuses_a_store_that_does_not_exist_yet(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Run from a folder that has no .graphthrift, as a user in another directory would.
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GRAPHTHRIFT_HOME", raising=False)
    monkeypatch.delenv("GRAPHTHRIFT_DATABASE_URL", raising=False)
    assert main(["report"]) == 1
    out = capsys.readouterr().out
    assert str(tmp_path / ".graphthrift") in out.replace("\n", "")
    assert "--home" in out and "--url" in out
    assert not (tmp_path / ".graphthrift").exists(), "an empty database was created"
    elsewhere = tmp_path / "nowhere"
    assert main(["report", "--home", str(elsewhere)]) == 1
    assert not elsewhere.exists()


def test_report_refuses_a_database_without_a_ledger(
    store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    from sqlalchemy import create_engine, text

    from cache_helpers import scratch_database

    with scratch_database(store.url) as (url, _):
        assert main(["--url", url, "report"]) == 1
        assert "no graphthrift ledger" in capsys.readouterr().out
        engine = create_engine(url)
        with engine.connect() as conn:
            tables = conn.execute(
                text("SELECT count(*) FROM pg_tables WHERE tablename LIKE 'graphthrift%'")
            ).scalar()
        engine.dispose()
        assert tables == 0, "report created the schema"


def test_report_says_which_database_it_reads(
    store: Store, ledger: Ledger, tenant: str, capsys: pytest.CaptureFixture[str]
) -> None:
    ledger.record(LedgerRecord(tenant_id=tenant, model="gpt-4o-mini", input_tokens=10))
    ledger.flush()
    assert main(["--url", store.url, "report", "--tenant-id", tenant]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    url = make_url(store.url)
    assert first.startswith("ledger: ") and f"/{url.database}" in first
    assert not url.password or url.password not in first


def test_report_shows_unpriced_models_as_unpriced_not_zero(
    store: Store,
    ledger: Ledger,
    tenant: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COLUMNS", "240")  # the whole table on one line per row
    ledger.record_many(
        [
            LedgerRecord(tenant_id=tenant, model="acme-local-llm-7b", input_tokens=900),
            LedgerRecord(tenant_id=tenant, model="acme-local-llm-7b", input_tokens=100),
            LedgerRecord(tenant_id=tenant, model="gpt-4o-mini", input_tokens=1000),
        ]
    )
    ledger.flush()
    out = tmp_path / "r.json"
    argv = ["--url", store.url, "report", "--by", "model", "--tenant-id", tenant]
    assert main([*argv, "--json", str(out)]) == 0
    table = capsys.readouterr().out
    rows = {r["model"]: r for r in json.loads(out.read_text())["rows"]}
    assert rows["acme-local-llm-7b"]["cost_usd"] is None
    assert rows["acme-local-llm-7b"]["unpriced"] == 2
    assert rows["gpt-4o-mini"]["cost_usd"] > 0 and rows["gpt-4o-mini"]["unpriced"] == 0
    local = next(line for line in table.splitlines() if "acme-local-llm-7b" in line)
    cells = [c.strip() for c in local.split("│")]
    header = next(line for line in table.splitlines() if "cost_usd" in line)
    cost = cells[[c.strip() for c in header.split("┃")].index("cost_usd")]
    assert cost == "n/a (2 unpriced)", local


def test_store_unavailable_hints_at_what_chose_the_server(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The hint names the variable only when it is set (it chose the server)."""
    from graphthrift.errors import StoreUnavailable

    url = "postgresql://app:***@db.internal:5432/app"
    monkeypatch.delenv("GRAPHTHRIFT_DATABASE_URL", raising=False)
    assert "give no URL" in str(StoreUnavailable(url, "connection refused"))
    assert "GRAPHTHRIFT_DATABASE_URL" not in str(StoreUnavailable(url, "connection refused"))
    monkeypatch.setenv("GRAPHTHRIFT_DATABASE_URL", "postgresql://app@db.internal/app")
    assert "unset GRAPHTHRIFT_DATABASE_URL" in str(StoreUnavailable(url, "connection refused"))
