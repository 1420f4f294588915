"""``graphthrift bench ledger``: what cost tagging costs, and how fast the ledger is.

Figures (all in one run, on a scratch database of the store's server):
- ``tagger_overhead_us``: CostTagger's callback work per LLM call (start + end), median and
  p95, beside langchain_core's ``UsageMetadataCallbackHandler`` measured the same way, and
  the ratio. ``invoke_overhead_us`` is the same comparison end to end through a fake model.
- ``write``: records per second from ``record()`` to a committed ``flush()``, and the
  writer's peak Python memory.
- ``report``: seconds for ``Ledger.report`` over ``report_rows`` records, by three rolled-up
  groupings (read from the rollups) and by ``thread_id`` (raw rows; over more than
  ``RAW_REPORT_MAX_ROWS`` rows it reads the last 24 hours, and ``thread_id_bounded`` says so).
"""

from __future__ import annotations

import argparse
import gc
import itertools
import resource
import statistics
import time
import tracemalloc
import uuid
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.table import Table
from sqlalchemy import text

from graphthrift.bench._common import (
    machine,
    mode,
    percentiles,
    progress,
    scratch_store,
    write_json,
)
from graphthrift.bench.ledger_scale import TARGETS as TARGETS_SCALE
from graphthrift.bench.ledger_scale import run_scale, scale_rows, time_reports
from graphthrift.ledger import Ledger, LedgerRecord
from graphthrift.store import Store

SIZES = {  # (timed calls, records written, report rows) per run size; the options cap them
    "quick": (2_000, 20_000, 100_000),
    "default": (5_000, 50_000, 200_000),
    "full": (20_000, 200_000, 1_000_000),
}
TARGETS = {"tagger_median_us": 50.0, "tagger_ratio": 2.0, "records_per_s": 20_000, "report_s": 1.0}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--calls", type=int, default=20_000, help="LLM calls timed for tagger overhead"
    )
    parser.add_argument(
        "--records", type=int, default=200_000, help="records written for throughput"
    )
    parser.add_argument(
        "--report-rows", type=int, default=1_000_000, help="rows in the report benchmark"
    )
    parser.add_argument(
        "--scale",
        type=int,
        nargs="?",
        const=0,
        default=None,
        metavar="N",
        help="only time report and alerts over N generated rows (default 1M; --full: 100M)",
    )


def _answer() -> Any:
    """The model answer both overhead figures time: an AIMessage with usage and a model."""
    from langchain_core.messages import AIMessage

    return AIMessage(
        "Refunds are issued within 14 days.",
        usage_metadata={"input_tokens": 120, "output_tokens": 40, "total_tokens": 160},
        response_metadata={"model_name": "gpt-4o-mini"},
    )


def _tagger_overhead(ledger: Ledger, calls: int) -> dict[str, Any]:
    from langchain_core.callbacks import CallbackManager
    from langchain_core.messages import BaseMessage, HumanMessage
    from langchain_core.outputs import ChatGeneration, LLMResult

    messages: list[list[BaseMessage]] = [
        [HumanMessage("What is the refund policy for damaged items?")]
    ]
    message = _answer()
    result = LLMResult(generations=[[ChatGeneration(message=message)]])
    metadata = {
        "tenant_id": "bench",
        "feature": "faq",
        "langgraph_node": "agent",
        "thread_id": "t1",
        "ls_model_name": "gpt-4o-mini",
    }

    def time_manager(handlers: list[Any], n: int) -> list[float]:
        """Per-call µs through LangChain's own CallbackManager, as a real model call runs it."""
        manager = CallbackManager(
            handlers=handlers, inheritable_handlers=handlers, metadata=metadata
        )
        samples: list[float] = []
        run_ids = [uuid.uuid4() for _ in range(n)]
        gc.disable()
        try:
            for run_id in run_ids:
                t0 = time.perf_counter_ns()
                (run_manager,) = manager.on_chat_model_start(
                    {}, messages, run_id=run_id, invocation_params={}
                )
                run_manager.on_llm_end(result)
                samples.append((time.perf_counter_ns() - t0) / 1000)
        finally:
            gc.enable()
        return samples

    samples = _interleaved(time_manager, calls, ledger)
    bare = statistics.median(samples["bare"])
    ours_p = {k: round(v - bare, 2) for k, v in percentiles(samples["ours"], 50, 95).items()}
    peer_p = {k: round(v - bare, 2) for k, v in percentiles(samples["peer"], 50, 95).items()}
    return {
        "calls": calls,
        "method": "µs per call through CallbackManager.on_chat_model_start + on_llm_end, minus"
        f" the median with no handler; no handler, CostTagger and the peer interleaved in"
        f" blocks of {BLOCK_CALLS} calls, the ledger flushed (untimed) between blocks",
        "bare_manager_us": round(bare, 2),
        "cost_tagger": ours_p,
        "usage_metadata_handler": peer_p,
        "ratio_median": round(ours_p["p50"] / max(peer_p["p50"], 0.01), 2),
        "ratio_p95": round(ours_p["p95"] / max(peer_p["p95"], 0.01), 2),
    }


#: Calls per block of the overhead figures: each handler's blocks alternate with the others',
#: so that the machine's speed, which drifts within a run, weighs on them alike.
BLOCK_CALLS = 50


def _interleaved(
    timer: Callable[[list[Any], int], list[float]], calls: int, ledger: Ledger
) -> dict[str, list[float]]:
    """``calls`` samples of ``timer`` (µs per call with the given callback handlers) for
    no handler (``bare``), CostTagger (``ours``) and UsageMetadataCallbackHandler
    (``peer``): each warmed up once, then timed in blocks of ``BLOCK_CALLS`` taken in turn
    (the order rotating each round), with the ledger's writer flushed between blocks,
    untimed, so that its work lands in no handler's samples."""
    from langchain_core.callbacks import UsageMetadataCallbackHandler

    from graphthrift.langchain import CostTagger

    handlers: dict[str, list[Any]] = {
        "bare": [],
        "ours": [CostTagger(ledger)],
        "peer": [UsageMetadataCallbackHandler()],
    }
    for used in handlers.values():
        timer(used, BLOCK_CALLS)  # warm up
    ledger.flush()
    out: dict[str, list[float]] = {name: [] for name in handlers}
    names = list(handlers)
    total, done = max(calls, 1), 0
    while done < total:
        n = min(BLOCK_CALLS, total - done)
        turn = (done // BLOCK_CALLS) % len(names)
        for name in names[turn:] + names[:turn]:
            out[name] += timer(handlers[name], n)
            ledger.flush()
        done += n
    return out


def _invoke_overhead(ledger: Ledger, calls: int) -> dict[str, Any]:
    from langchain_core.language_models.fake_chat_models import GenericFakeChatModel

    message = _answer()
    model = GenericFakeChatModel(messages=itertools.repeat(message))

    def time_invoke(callbacks: list[Any], n: int) -> list[float]:
        config: Any = {"callbacks": callbacks, "metadata": {"tenant_id": "bench"}}
        samples = []
        for _ in range(n):
            t0 = time.perf_counter_ns()
            model.invoke("What is the refund policy?", config=config)
            samples.append((time.perf_counter_ns() - t0) / 1000)
        return samples

    samples = _interleaved(time_invoke, calls, ledger)
    bare, ours, peer = (statistics.median(samples[k]) for k in ("bare", "ours", "peer"))
    return {
        "calls": calls,
        "bare_invoke_us": round(bare, 2),
        "cost_tagger_us": round(ours - bare, 2),
        "usage_metadata_handler_us": round(peer - bare, 2),
    }


def _make_records(n: int) -> list[LedgerRecord]:
    return [
        LedgerRecord(
            model="gpt-4o-mini",
            tenant_id=f"tenant-{i % 50}",
            feature="faq",
            node="agent",
            thread_id=f"th-{i % 997}",
            input_tokens=900 + i % 300,
            output_tokens=80 + i % 40,
            latency_ms=250.0,
        )
        for i in range(n)
    ]


def _write_throughput(store: Store, n: int) -> dict[str, Any]:
    records = _make_records(n)
    ledger = Ledger(store)
    t0 = time.perf_counter()
    for record in records:
        ledger.record(record)
    enqueue_s = time.perf_counter() - t0
    ledger.flush(timeout=600)
    total_s = time.perf_counter() - t0
    ledger.close()
    # memory: a second, traced run, so tracing does not slow the timed one
    records = _make_records(min(n, 50_000))
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    traced = Ledger(store)
    traced.record_many(records)
    traced.flush(timeout=600)
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    traced.close()
    return {
        "records": n,
        "records_per_s": round(n / total_s),
        "enqueue_us_per_record": round(enqueue_s / n * 1e6, 3),
        "seconds": round(total_s, 3),
        "writer_peak_mb_per_50k": round(peak / 2**20, 2),
        "process_max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def _report_speed(store: Store, rows: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    with store.connect() as conn:
        conn.execute(
            text(
                """
            INSERT INTO graphthrift_ledger (ts, kind, tenant_id, feature, route, model, node, thread_id,
                input_tokens, output_tokens, cached_tokens, cost_usd, latency_ms, success, saved_tokens)
            SELECT now() - (g % 30) * interval '1 day', CASE WHEN g % 10 = 0 THEN 'cache_hit' ELSE 'llm' END,
                   'tenant-' || (g % 200), 'feature-' || (g % 7), 'route-' || (g % 3),
                   CASE WHEN g % 4 = 0 THEN 'gpt-4o' ELSE 'gpt-4o-mini' END, 'node-' || (g % 12),
                   'thread-' || (g % 5000), 500 + g % 1500, 50 + g % 300, g % 200, (g % 1000) / 1e6,
                   200 + g % 900, g % 50 <> 0, 0
            FROM generate_series(1, :n) AS g
            """
            ),
            {"n": rows},
        )
        conn.execute(text("ANALYZE graphthrift_ledger"))
    load_s = time.perf_counter() - t0
    ledger = Ledger(store)
    timings = time_reports(
        ledger, (["tenant_id"], ["model", "day"], ["node", "feature", "route"], ["thread_id"])
    )
    bounded = ledger.report(["thread_id"]).range.bounded
    ledger.close()
    return {
        "rows": rows,
        "load_s": round(load_s, 2),
        "seconds_by": timings,
        "max_s": max(timings.values()),
        "thread_id_bounded": bounded,
    }


def run(args: argparse.Namespace, console: Console) -> dict[str, Any]:
    if getattr(args, "scale", None) is not None:
        return _run_scale(args, console)
    quick = mode(args) == "quick"
    sized = SIZES[mode(args)]
    calls, n_records, report_rows = (
        min(args.calls, sized[0]),
        min(args.records, sized[1]),
        min(args.report_rows, sized[2]),
    )
    base = Store(getattr(args, "url", None))
    # bar units: about a second each at the default size on 2 cores
    with scratch_store(base) as store, progress(console, "bench ledger", total=10) as advance:
        ledger = Ledger(store)
        overhead = _tagger_overhead(ledger, calls)
        advance(2, description="bench ledger: invoke overhead")
        invoke = _invoke_overhead(ledger, max(200, calls // 10))
        ledger.close()
        advance(1, description=f"bench ledger: writing {n_records:,} records")
        write = _write_throughput(store, n_records)
        advance(2, description=f"bench ledger: report over {report_rows:,} rows")
        report = _report_speed(store, report_rows)
        advance(5)
    base.close()
    figures = {
        "benchmark": "ledger",
        "quick": quick,
        "mode": mode(args),
        "machine": machine(),
        "tagger_overhead_us": overhead,
        "invoke_overhead_us": invoke,
        "write": write,
        "report": report,
        "targets": TARGETS,
        "meets_targets": {
            "tagger_median_us": overhead["cost_tagger"]["p50"] <= TARGETS["tagger_median_us"],
            "tagger_ratio": overhead["ratio_median"] <= TARGETS["tagger_ratio"],
            "records_per_s": write["records_per_s"] >= TARGETS["records_per_s"],
            "report_s": report["max_s"] <= TARGETS["report_s"],
        },
    }
    table = Table(title="graphthrift bench ledger")
    for col in ("figure", "graphthrift", "peer / target"):
        table.add_column(col)
    table.add_row(
        "CostTagger µs/call p50",
        f"{overhead['cost_tagger']['p50']:.1f}",
        f"UsageMetadataCallbackHandler {overhead['usage_metadata_handler']['p50']:.1f} (ratio {overhead['ratio_median']})",
    )
    table.add_row(
        "CostTagger µs/call p95",
        f"{overhead['cost_tagger']['p95']:.1f}",
        f"{overhead['usage_metadata_handler']['p95']:.1f} (ratio {overhead['ratio_p95']})",
    )
    table.add_row(
        "invoke overhead µs",
        f"{invoke['cost_tagger_us']:.1f}",
        f"{invoke['usage_metadata_handler_us']:.1f}",
    )
    table.add_row(
        "ledger writes/s", f"{write['records_per_s']:,}", f">= {TARGETS['records_per_s']:,}"
    )
    table.add_row(
        f"report over {report['rows']:,} rows (s)",
        f"{report['max_s']:.3f}",
        f"< {TARGETS['report_s']}",
    )
    table.add_row("writer peak MB per 50k records", f"{write['writer_peak_mb_per_50k']}", "")
    console.print(table)
    write_json(figures, getattr(args, "json", None))
    return figures


def _run_scale(args: argparse.Namespace, console: Console) -> dict[str, Any]:
    rows = scale_rows(mode(args), args.scale)
    base = Store(getattr(args, "url", None))
    with scratch_store(base) as store:
        scale = run_scale(store, rows, console)
    base.close()
    figures = {"benchmark": "ledger", "mode": mode(args), "machine": machine(), "scale": scale}
    table = Table(title=f"graphthrift bench ledger --scale {rows:,}")
    for col in ("figure", "value", "target at 100M rows"):
        table.add_column(col)
    table.add_row("rollup rows", f"{scale['rollup_rows']:,}", "")
    table.add_row(
        "report (s)", f"{scale['report_seconds']:.3f}", f"< {TARGETS_SCALE['report_seconds']}"
    )
    for label, key in (
        ("report by thread_id (s)", "report_by_thread_id_seconds"),
        ("report by run_id (s)", "report_by_run_id_seconds"),
        ("report --per task (s)", "report_per_task_seconds"),
    ):
        table.add_row(label, f"{scale[key]:.3f}", f"< {TARGETS_SCALE['report_seconds']}")
    table.add_row(
        "alerts (s)", f"{scale['alerts_seconds']:.3f}", f"< {TARGETS_SCALE['alerts_seconds']}"
    )
    console.print(table)
    if scale["raw_reports_bounded"]:
        console.print(f"thread/run reports: {scale['raw_reports_bounded']}", soft_wrap=True)
    write_json(figures, getattr(args, "json", None))
    return figures
