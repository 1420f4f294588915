"""``graphthrift bench ops``: alerts on a simulated week, and the distillation export's speed.

Anomaly: ``--trials`` simulated fortnights of 20 monitored series (features) with a daily
cycle, a quieter weekend and lognormal noise: one week of history, then one week watched by
``check_alerts``, with a prompt regression (cost x``--factor``) injected on one series at a
random hour of the watched week. Figures: ``anomaly.detected_within_hours`` (worst trial:
hours from the regression's start to the end of the hour that alerted; target <= 2) and
``anomaly.false_alerts_per_week_per_20_series`` (mean over trials; target <= 1), with
``alerts_seconds`` and the rows read. Export: ``--export-rows`` captured pairs (100,000)
bulk-loaded, then ``export_distill`` timed (``export_seconds_100k`` at the full size).

Batch: 1,000 requests through ``BatchChatModel`` against a local OpenAI Batch API
(``graphthrift.bench.batch_server``, real HTTP): the first model gives up mid-job (the
provider still working), a new one picks up the stored job. ``batch.cost_ratio_vs_sync`` is
the ledger's cost over its synchronous price (target 0.5), ``submissions_after_restart``
the batches the server received (target 1). Runs on a scratch database.
``alerts_seconds_10m_rows`` is measured on 10M generated ledger rows under ``--full`` (the
scale bench of ``graphthrift bench ledger --scale``, on a second scratch database), else null.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from rich.console import Console
from rich.table import Table

from graphthrift.bench._common import machine, scratch_store, write_json
from graphthrift.bench.ledger_scale import run_scale
from graphthrift.ledger import Ledger, LedgerRecord
from graphthrift.ops import AlertRules, check_alerts, export_distill
from graphthrift.ops.schema import DISTILL_TABLE
from graphthrift.store import Store

SERIES = 20
START = datetime(2026, 6, 1, tzinfo=UTC)  # a Monday


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--trials", type=int, default=5, help="simulated fortnights")
    parser.add_argument("--factor", type=float, default=2.0, help="cost multiplier injected")
    parser.add_argument("--noise", type=float, default=0.15, help="lognormal sigma per hour")
    parser.add_argument("--export-rows", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=17)


def _week_traffic(
    rng: random.Random, tenant: str, noise: float, factor: float
) -> tuple[list[LedgerRecord], str, datetime]:
    bases = {f"f{n:02d}": rng.uniform(0.02, 0.5) for n in range(SERIES)}
    victim = rng.choice(sorted(bases))
    injected = START + timedelta(days=7, hours=rng.randrange(12, 6 * 24))
    rows: list[LedgerRecord] = []
    for hour in range(14 * 24):
        ts = START + timedelta(hours=hour)
        day = 1 + 0.7 * math.sin(2 * math.pi * (ts.hour - 8) / 24)
        weekend = 0.6 if ts.weekday() >= 5 else 1.0
        for name, base in bases.items():
            cost = base * day * weekend * rng.lognormvariate(0, noise)
            if name == victim and ts >= injected:
                cost *= factor
            rows.append(
                LedgerRecord(
                    ts=ts + timedelta(minutes=30),
                    tenant_id=tenant,
                    feature=name,
                    model="gpt-4o-mini",
                    cost_usd=max(cost, 1e-9),
                )
            )
    return rows, victim, injected


def _anomaly(store: Store, args: argparse.Namespace, trials: int) -> dict[str, Any]:
    rng = random.Random(args.seed)
    ledger = Ledger(store, batch_size=5_000)
    detections: list[float | None] = []
    false_alerts: list[int] = []
    seconds: list[float] = []
    rows_read = 0
    rules = AlertRules(dimensions=("feature",))
    try:
        for trial in range(trials):
            tenant = f"bench-ops-{trial}"
            rows, victim, injected = _week_traffic(rng, tenant, args.noise, args.factor)
            ledger.record_many(rows)
            ledger.flush(timeout=120)
            rows_read += len(rows)
            t0 = time.perf_counter()
            alerts = check_alerts(
                store,
                rules=rules,
                since=START + timedelta(days=7),
                until=START + timedelta(days=14),
                tenant_id=tenant,
                only=("cost",),
            )
            seconds.append(time.perf_counter() - t0)
            caught = [
                a for a in alerts if a.dimension == f"feature={victim}" and a.last_hour >= injected
            ]
            detections.append(
                (caught[0].first_hour - injected).total_seconds() / 3600 + 1 if caught else None
            )
            # A regression that persists splits into several runs as it enters the baseline;
            # those are the true anomaly, not false alerts.
            false_alerts.append(len([a for a in alerts if a not in caught]))
    finally:
        ledger.close()
    found = [d for d in detections if d is not None]
    return {
        "trials": trials,
        "series": SERIES,
        "factor": args.factor,
        "noise_sigma": args.noise,
        "detected": f"{len(found)}/{trials}",
        "detected_within_hours": max(found) if len(found) == trials else None,
        "detected_within_hours_per_trial": detections,
        "false_alerts_per_week_per_20_series": sum(false_alerts) / trials,
        "alerts_seconds": round(max(seconds), 3),
        "alerts_rows_per_check": rows_read // max(trials, 1),
    }


def _export(store: Store, rows: int) -> dict[str, Any]:
    now = datetime.now(UTC)
    with store.raw_connection() as conn:
        with (
            conn.cursor() as cur,
            cur.copy(
                f"COPY {DISTILL_TABLE} (ts, expires_at, tenant_id, feature, route, model, prompt,"
                " answer, success, hash) FROM STDIN"
            ) as copy,
        ):
            for n in range(rows):
                prompt = [
                    {"role": "system", "content": "Classify the ticket."},
                    {"role": "user", "content": f"Ticket {n}: the invoice is off by {n % 97}"},
                ]
                copy.write_row(
                    (
                        now - timedelta(seconds=n % 86_400),
                        now + timedelta(days=30),
                        "bench",
                        "triage",
                        "strong",
                        "gpt-4o",
                        json.dumps(prompt),
                        f"team {n % 5}",
                        True,
                        f"{n:064x}",
                    )
                )
        conn.commit()
    out = store.home / "bench-distill"
    t0 = time.perf_counter()
    figures = export_distill(
        store, out, feature="triage", route="strong", since=now - timedelta(days=2)
    )
    seconds = time.perf_counter() - t0
    return {"export_rows": figures["pairs"], "export_seconds": round(seconds, 3)}


def _batch(store: Store, requests: int = 1_000) -> dict[str, Any]:
    """A ``requests``-call batch job through ``BatchChatModel`` on a local OpenAI Batch API,
    restarted mid-job: a second model picks up the stored job. Cost from the ledger."""
    try:
        from langchain_openai import ChatOpenAI
        from pydantic import SecretStr

        from graphthrift.bench.batch_server import BatchServer

        server = BatchServer().start()
    except ImportError as exc:  # pytest-httpserver / langchain-openai are dev dependencies
        return {"cost_ratio_vs_sync": None, "submissions_after_restart": None, "note": str(exc)}
    from graphthrift.errors import BatchJobTimeout
    from graphthrift.langchain.batch import BatchChatModel

    ledger = Ledger(store)
    tenant = f"bench-batch-{os.getpid()}"
    config: Any = {"metadata": {"graphthrift_batch": True, "tenant_id": tenant}}
    prompts: list[Any] = [f"document {n}: summarise it" for n in range(requests)]

    def model(timeout: float | None) -> BatchChatModel:
        chat = ChatOpenAI(
            model="gpt-4o-mini",
            base_url=server.openai_url,
            api_key=SecretStr("sk-bench"),
            max_retries=0,
        )
        return BatchChatModel(
            model=chat, store=store, ledger=ledger, poll_interval=0.02,
            max_poll_interval=0.1, timeout=timeout,
        )  # fmt: skip

    try:
        server.hold = True  # the provider is still working when the first process stops
        t0 = time.perf_counter()
        with contextlib.suppress(BatchJobTimeout):
            model(0.3).batch(prompts, config=config)
        before = server.submissions  # the job was submitted before the "crash"
        server.hold = False
        answers = model(None).batch(prompts, config=config)  # the restarted process
        seconds = time.perf_counter() - t0
        ledger.flush()
        rows = ledger.records(tenant_id=tenant)
    finally:
        ledger.close()
        server.stop()
    cost = sum(float(r["cost_usd"] or 0) for r in rows)
    sync = cost + sum(float(r["saved_usd"] or 0) for r in rows)
    return {
        "requests": requests,
        "answered": len(answers),
        "ledger_rows": len(rows),
        "cost_usd": cost,
        "sync_cost_usd": sync,
        "cost_ratio_vs_sync": round(cost / sync, 6) if sync else None,
        "submissions_before_restart": before,
        "submissions_after_restart": server.submissions,
        "seconds": round(seconds, 3),
        "note": "local OpenAI /v1/files + /v1/batches server; restarted mid-job",
    }


def run(args: argparse.Namespace, console: Console) -> dict[str, Any]:
    quick = getattr(args, "quick", False)
    trials = min(args.trials, 2) if quick else args.trials
    export_rows = min(args.export_rows, 10_000) if quick else args.export_rows
    base = Store(getattr(args, "url", None))
    try:
        with scratch_store(base) as store:
            anomaly = _anomaly(store, args, trials)
            export = _export(store, export_rows)
            batch = _batch(store)
        scale = None
        if getattr(args, "full", False):
            with scratch_store(base) as big:
                scale = run_scale(big, 10_000_000, console)
    finally:
        base.close()
    figures: dict[str, Any] = {
        "anomaly": anomaly,
        "batch": batch,
        "alerts_seconds_10m_rows": None if scale is None else scale["alerts_seconds_10m_rows"],
        "alerts_seconds": anomaly["alerts_seconds"],
        "export_seconds_100k": export["export_seconds"] if export_rows == 100_000 else None,
        **export,
        "machine": {**machine(), "load_avg_1m": round(os.getloadavg()[0], 2)},
    }
    table = Table(title="graphthrift bench ops")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for key in (
        "detected",
        "detected_within_hours",
        "false_alerts_per_week_per_20_series",
        "alerts_seconds",
        "alerts_rows_per_check",
    ):
        table.add_row(key, str(anomaly[key]))
    table.add_row("export_rows", f"{export['export_rows']:,}")
    table.add_row("export_seconds", str(export["export_seconds"]))
    table.add_row("batch cost_ratio_vs_sync", str(batch["cost_ratio_vs_sync"]))
    table.add_row("batch submissions_after_restart", str(batch["submissions_after_restart"]))
    console.print(table)
    write_json(figures, getattr(args, "json", None))
    return figures
