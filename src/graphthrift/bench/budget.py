"""``graphthrift bench budget``: overspend of one tenant's budget under concurrent runs.

``--runs`` asyncio runs of one tenant (default 16) each make model calls in a loop:
reserve the worst case, "call" the model, settle a random actual usage at most the
reservation. The tenant's limit is small enough that most calls are refused. Figures:
``overspend_usd`` (spent beyond the limit), ``max_reservation_usd``, ``within_bound``
(overspend at most one reservation), calls admitted and refused, and ``reserve_ms``
(p50/p95 of one atomic reservation on PostgreSQL). Runs on a scratch database.

``--overrun F`` makes the "model" ignore its cap and write F times the output it reserved
(issue 12, item 9). Then ``overspend_reservations`` (overspend in units of the largest
reservation) can be large, and the bound that holds is ``documented_bound_usd``: the
limit plus, for every run, the most one call actually cost (``within_documented_bound``);
``admitted_after_limit`` counts reservations granted once spend had passed the limit (0).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import time
import uuid
from typing import Any

from rich.console import Console
from rich.table import Table

from graphthrift.bench._common import (
    machine,
    mode,
    percentiles,
    progress,
    scratch_store,
    tick,
    write_json,
)
from graphthrift.budget import Budget, Shortfall
from graphthrift.store import Store

MODEL = "gpt-4o-mini"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runs", type=int, default=16, help="concurrent runs of one tenant")
    parser.add_argument("--calls", type=int, default=40, help="model calls tried per run")
    parser.add_argument("--limit-usd", type=float, default=0.01, help="the tenant's daily limit")
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument(
        "--overrun",
        type=float,
        default=1.0,
        help="the model writes this many times its reserved output (1: it keeps to its cap)",
    )


async def _workload(
    budget: Budget, store: Store, args: argparse.Namespace, calls: int
) -> dict[str, Any]:
    rng = random.Random(args.seed)
    tenant = f"bench-{uuid.uuid4().hex[:8]}"
    latencies: list[float] = []
    admitted = refused = after_limit = 0
    biggest = biggest_call = settled_usd = 0.0
    overrun = float(getattr(args, "overrun", 1.0) or 1.0)

    async def one_run(worker: int) -> None:
        nonlocal admitted, refused, biggest, biggest_call, settled_usd, after_limit
        for _ in range(calls):
            prompt = [{"role": "user", "content": "word " * rng.randint(20, 1500)}]
            settled_before = settled_usd  # committed before this reservation was asked
            t0 = time.perf_counter()
            result = await budget.atry_reserve(
                MODEL, prompt, tags={"tenant_id": tenant, "run_id": f"{tenant}-{worker}"}
            )
            latencies.append((time.perf_counter() - t0) * 1000)
            tick()
            if isinstance(result, Shortfall):
                refused += 1
                continue
            admitted += 1
            after_limit += settled_before > args.limit_usd  # must never happen
            biggest = max(biggest, result.usd)
            await asyncio.sleep(rng.random() * 0.002)  # the model call
            cap = result.estimate.output_tokens
            out = int(cap * overrun) if overrun > 1 else rng.randint(0, cap)
            cost = budget.prices.cost(MODEL, result.estimate.input_tokens, out) or 0.0
            biggest_call = max(biggest_call, cost)
            await budget.asettle(
                result, input_tokens=result.estimate.input_tokens, output_tokens=out
            )
            settled_usd += cost

    try:
        await asyncio.gather(*(one_run(w) for w in range(args.runs)))
    finally:
        await store.async_engine.dispose()
    held = budget.usage({"tenant_id": tenant})["tenant"]
    overspend = max(0.0, held["spent_usd"] - args.limit_usd)
    return {
        "n_runs": args.runs,
        "calls_tried": args.runs * calls,
        "calls_admitted": admitted,
        "calls_refused": refused,
        "limit_usd": args.limit_usd,
        "spent_usd": round(held["spent_usd"], 8),
        "reserved_usd_left": round(held["reserved_usd"], 10),
        "overspend_usd": round(overspend, 8),
        "max_reservation_usd": round(biggest, 8),
        "within_bound": overspend <= biggest + 1e-12,
        "overrun": overrun,
        "overspend_reservations": round(overspend / biggest, 2) if biggest else 0.0,
        "max_call_usd": round(biggest_call, 8),
        "documented_bound_usd": round(args.limit_usd + args.runs * biggest_call, 8),
        "within_documented_bound": held["spent_usd"]
        <= args.limit_usd + args.runs * biggest_call + 1e-12,
        "admitted_after_limit": after_limit,
        "reserve_ms": percentiles(latencies, 50, 95),
    }


def run(args: argparse.Namespace, console: Console) -> dict[str, Any]:
    calls = min(args.calls, {"quick": 10, "default": 20, "full": args.calls}[mode(args)])
    base = Store(getattr(args, "url", None))
    try:
        with (
            scratch_store(base) as store,
            progress(console, "bench budget", total=args.runs * calls),
        ):
            budget = Budget(store, max_usd={"tenant": args.limit_usd}, max_output_tokens=500)
            figures = asyncio.run(_workload(budget, store, args, calls))
    finally:
        base.close()
    figures["machine"] = {**machine(), "load_avg_1m": round(os.getloadavg()[0], 2)}
    table = Table(title=f"graphthrift bench budget ({args.runs} concurrent runs)")
    for key in (
        "calls_admitted",
        "calls_refused",
        "limit_usd",
        "spent_usd",
        "overspend_usd",
        "max_reservation_usd",
        "within_bound",
        "overrun",
        "overspend_reservations",
        "documented_bound_usd",
        "within_documented_bound",
        "admitted_after_limit",
    ):
        table.add_row(key, str(figures[key]))
    table.add_row(
        "reserve_ms p50/p95", f"{figures['reserve_ms']['p50']}/{figures['reserve_ms']['p95']}"
    )
    console.print(table)
    write_json(figures, getattr(args, "json", None))
    return figures
