"""``graphthrift bench ops --quick``: the figures the issue fixes, on a scratch database."""

from __future__ import annotations

import json
from pathlib import Path

from graphthrift import Store


def test_bench_ops_quick_writes_its_figures(store: Store, tmp_path: Path) -> None:
    from graphthrift.cli import main

    out = tmp_path / "ops.json"
    assert (
        main(
            [
                "--url",
                store.url,
                "bench",
                "ops",
                "--quick",
                "--export-rows",
                "3000",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    figures = json.loads(out.read_text())
    anomaly = figures["anomaly"]
    assert anomaly["trials"] == 2 and anomaly["detected"] == "2/2"
    assert anomaly["detected_within_hours"] <= 2  # the target
    assert anomaly["false_alerts_per_week_per_20_series"] <= 1  # the target
    assert figures["export_rows"] == 3000 and figures["export_seconds"] > 0
    assert set(figures["batch"]) >= {"cost_ratio_vs_sync", "submissions_after_restart"}
    batch = figures["batch"]
    assert batch["answered"] == 1_000 and batch["ledger_rows"] == 1_000
    assert abs(batch["cost_ratio_vs_sync"] - 0.5) < 1e-6  # the target: half price
    assert batch["submissions_before_restart"] == 1  # the restart came mid-job
    assert batch["submissions_after_restart"] == 1  # picked up after the restart, not resubmitted
