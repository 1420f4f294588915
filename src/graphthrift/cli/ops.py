"""Operations commands: ``graphthrift batch`` and ``report --per task`` / ``--compare``.

    graphthrift report --per task [--by tenant_id,feature,route,prompt_version]
        [--task-key run_id|thread_id] [--since 7d] [--json PATH]
    graphthrift report --compare prompt_version=v1,v2 [--confidence 0.95] [--json PATH]

    graphthrift alerts [--since 24h] [--until T] [--dimensions tenant_id,feature]
        [--escalation-target 0.2] [--k 4] [--baseline-days 7] [--tenant-id T]
        [--webhook URL] [--json PATH] [--prometheus-rules PATH]
    graphthrift batch list [--status S] [--limit N] [--json PATH]
    graphthrift export distill --feature F [--route strong] [--since 30d] --out DIR
        [--format openai-jsonl|anthropic-jsonl|hf-datasets] [--held-out 0.1] [--json PATH]
    graphthrift batch status JOB_ID [--json PATH]
    graphthrift batch resume JOB_ID [--timeout S]   # poll, collect and book a stored job

``resume`` drives a job that a process left running (e.g. from a cron job): it builds the
provider's SDK client from its documented environment variables (``OPENAI_API_KEY`` /
``OPENAI_BASE_URL``, ``ANTHROPIC_API_KEY`` / ``ANTHROPIC_BASE_URL``), collects the results
and books them in the ledger once.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from graphthrift.bench.command import write_json

if TYPE_CHECKING:
    from graphthrift.store.postgres import Store

__all__ = ["COMMANDS", "add_parsers", "extend_report", "handles_report", "report", "run"]

#: The top-level commands this module owns.
COMMANDS = ("batch", "alerts", "export")


def add_parsers(subparsers: Any) -> None:
    """Add the operations commands to the CLI's subparsers."""
    from graphthrift.cli import _since

    alerts: argparse.ArgumentParser = subparsers.add_parser(
        "alerts", help="cost, escalation, cache, refusal and retry alerts from the ledger"
    )
    alerts.add_argument("--since", type=_since, help="first hour checked (default: 24h ago)")
    alerts.add_argument("--until", type=_since, help="end of the window (default: now)")
    alerts.add_argument("--dimensions", default="tenant_id,feature")
    alerts.add_argument("--escalation-target", type=float, default=0.2)
    alerts.add_argument("--k", type=float, default=4.0, help="robust deviations allowed")
    alerts.add_argument("--baseline-days", type=int, default=7)
    alerts.add_argument("--tenant-id", dest="tenant_id", help="only this tenant")
    alerts.add_argument("--feature", help="only this feature")
    alerts.add_argument("--webhook", help="POST each alert as JSON to this URL")
    alerts.add_argument("--json", metavar="PATH", help="also write the alerts as JSON")
    alerts.add_argument(
        "--prometheus-rules", metavar="PATH", help="write the same conditions as Prometheus rules"
    )
    export: argparse.ArgumentParser = subparsers.add_parser(
        "export", help="export captured data (distill: a fine-tune set)"
    )
    export_sub = export.add_subparsers(dest="export_command", metavar="WHAT")
    distill = export_sub.add_parser("distill", help="teacher outputs as a fine-tune set")
    distill.add_argument("--feature", required=True)
    distill.add_argument("--route", help="only this route (e.g. strong)")
    distill.add_argument("--since", type=_since, help="window start (default: 30 days ago)")
    distill.add_argument("--tenant-id", dest="tenant_id")
    distill.add_argument(
        "--format",
        dest="fmt",
        default="openai-jsonl",
        choices=["openai-jsonl", "anthropic-jsonl", "hf-datasets"],
    )
    distill.add_argument("--held-out", type=float, default=0.1)
    distill.add_argument(
        "--out",
        required=True,
        help="directory for train/held_out JSONL (hf-datasets: train/test + README card)",
    )
    distill.add_argument("--json", metavar="PATH", help="also write the figures as JSON")

    batch: argparse.ArgumentParser = subparsers.add_parser(
        "batch", help="Batch API jobs kept in the store (list, status, resume)"
    )
    sub = batch.add_subparsers(dest="batch_command", metavar="COMMAND")
    listing = sub.add_parser("list", help="recent jobs, newest first")
    listing.add_argument("--status", help="only jobs in this status (queued, submitted, ...)")
    listing.add_argument("--limit", type=int, default=50)
    listing.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    status = sub.add_parser("status", help="one job and its request counts")
    status.add_argument("job_id")
    status.add_argument("--json", metavar="PATH", help="also write it as JSON")
    resume = sub.add_parser("resume", help="poll, collect and book a stored job")
    resume.add_argument("job_id")
    resume.add_argument("--timeout", type=float, help="seconds to wait (default: until done)")
    resume.add_argument("--poll-interval", type=float, default=5.0)
    resume.add_argument("--json", metavar="PATH", help="also write the outcome counts as JSON")


def extend_report(report: argparse.ArgumentParser) -> None:
    """Add ``--per task`` and ``--compare`` to the ``report`` command."""
    report.add_argument(
        "--per",
        choices=["task"],
        help="task: cost per successful task (a task is a run, or a thread with --task-key)",
    )
    report.add_argument("--task-key", choices=["run_id", "thread_id"], default="run_id")
    report.add_argument(
        "--compare",
        metavar="DIM=A,B",
        help="change in cost per successful task from A to B, with a bootstrap interval",
    )
    report.add_argument("--confidence", type=float, default=0.95)


def comma_list(value: str) -> list[str]:
    """The non-empty items of a comma-separated option (``--by tenant_id,feature``)."""
    return [item.strip() for item in value.split(",") if item.strip()]


def handles_report(args: argparse.Namespace) -> bool:
    """Whether this ``report`` invocation is a task report (``--per`` or ``--compare``)."""
    return bool(getattr(args, "per", None) or getattr(args, "compare", None))


def report(
    args: argparse.Namespace, console: Console, open_store: Callable[[], Store]
) -> dict[str, Any]:
    """``report --per task`` or ``report --compare DIM=A,B``, on the store ``open_store``
    opens once the arguments are checked (the one plain ``report`` reads: ``--url``, else
    ``--home``, never a new empty one)."""
    from graphthrift.ledger.query import bounds_shown_by_caller
    from graphthrift.ops.tasks import check_task_report, compare, cost_per_task, task_range

    filters = {k: getattr(args, k) for k in ("tenant_id", "feature") if getattr(args, k, None)}
    by = comma_list(args.by)
    dimension: str | None = None
    pair: list[str] = []
    if args.compare:  # arguments first: a bad one must not wait for a big ledger's count
        dimension, _, values = args.compare.partition("=")
        pair = [v for v in values.split(",") if v]
        if not dimension or len(pair) != 2:
            raise ValueError(
                f"--compare takes DIM=A,B (e.g. prompt_version=v1,v2), got {args.compare!r}"
            )
    check_task_report(
        [] if args.compare else by, task=args.task_key, dimension=dimension, filters=list(filters)
    )
    store = open_store()
    try:
        what = "report --compare" if args.compare else "report --per task"
        # bounded on a big ledger, on whole hours (printed, not logged too)
        with store.connect() as conn, bounds_shown_by_caller():
            read = task_range(conn, what, args.since, args.until)
        if read.bounded:
            console.print(f"[yellow]{read.bounded}[/yellow]", soft_wrap=True)
        if dimension is not None:
            figures = compare(
                store,
                dimension,
                pair,
                task=args.task_key,
                confidence=args.confidence,
                since=read.since,
                until=read.until,
                **filters,
            )
            _print_compare(figures, console)
        else:
            rows = cost_per_task(
                store, by, task=args.task_key, since=read.since, until=read.until, **filters
            )
            _print_tasks(by, rows, console)
            figures = {"by": by, "per": "task", "task": args.task_key, "rows": rows}
        figures["bounded"] = read.bounded
    finally:
        store.close()
    write_json(figures, args.json)
    return figures


def _money(value: Any) -> str:
    return "-" if value is None else f"{value:.6f}"


def _print_tasks(by: list[str], rows: list[dict[str, Any]], console: Console) -> None:
    table = Table(title=f"graphthrift cost per successful task by {', '.join(by) or 'all'}")
    columns = [
        *by,
        "tasks",
        "successful",
        "failed",
        "unknown",
        "cost_usd",
        "unknown_cost_usd",
        "cost_per_successful_task",
        "retry_cost_usd",
        "cache_saved_usd",
    ]
    for col in columns:
        table.add_column(col, justify="left" if col in by else "right")
    for row in rows:
        table.add_row(
            *(
                _money(row[c])
                if c.endswith("usd") or c == "cost_per_successful_task"
                else ("∅" if row[c] is None else str(row[c]))
                for c in columns
            )
        )
    console.print(table)


def _print_compare(figures: dict[str, Any], console: Console) -> None:
    a, b = figures["a"], figures["b"]
    dim = figures["dimension"]
    for side in (a, b):
        console.print(
            f"{dim}={side['value']}: {side['tasks']} tasks, {side['successful']} successful,"
            f" cost per successful task {_money(side['cost_per_successful_task'])}"
        )
    if figures["delta"] is None:
        console.print("no comparison: a side has no successful task")
        return
    console.print(
        f"change {a['value']} -> {b['value']}: {figures['delta']:+.6f} USD"
        f" ({figures['delta_pct']:+.1f}%), {figures['confidence']:.0%} interval"
        f" [{_money(figures['ci_low'])}, {_money(figures['ci_high'])}]"
    )


def run(args: argparse.Namespace, console: Console) -> dict[str, Any]:
    """Run the operations command ``args`` names."""
    from graphthrift.store.postgres import Store

    store = Store(args.url)
    try:
        if args.command == "batch":
            return _batch(args, store, console)
        if args.command == "alerts":
            return _alerts(args, store, console)
        if args.command == "export":
            return _export(args, store, console)
        raise ValueError(f"unknown operations command {args.command!r}")
    finally:
        store.close()


def _export(args: argparse.Namespace, store: Any, console: Console) -> dict[str, Any]:
    from graphthrift.ops.distill import export_distill

    if getattr(args, "export_command", None) != "distill":
        raise ValueError("graphthrift export needs what to export: distill")
    figures = export_distill(
        store,
        args.out,
        feature=args.feature,
        route=args.route,
        since=args.since,
        fmt=args.fmt,
        held_out=args.held_out,
        tenant_id=args.tenant_id,
    )
    console.print(
        f"{figures['pairs']:,} pairs ({figures['train']:,} train, {figures['held_out']:,}"
        f" held out) written to {args.out} as {figures['format']}"
    )
    console.print(
        f"volume: {figures['monthly_calls']:,} calls/month, ${figures['monthly_cost_usd']:.2f}"
        f"/month today; {figures['verdict']}"
    )
    write_json(figures, args.json)
    return figures


def _alerts(args: argparse.Namespace, store: Any, console: Console) -> dict[str, Any]:
    from graphthrift.ops.alerts import AlertMonitor, AlertRules, write_prometheus_rules

    rules = AlertRules(
        dimensions=tuple(comma_list(args.dimensions)),
        escalation_target=args.escalation_target,
        k=args.k,
        baseline_days=args.baseline_days,
    )
    filters = {k: getattr(args, k) for k in ("tenant_id", "feature") if getattr(args, k, None)}
    monitor = AlertMonitor(store, rules=rules, webhook=args.webhook, **filters)
    found = monitor.check(since=args.since, until=args.until)
    table = Table(title=f"graphthrift alerts ({len(found)})")
    for col in ("rule", "dimension", "figure", "baseline", "first hour (UTC)", "hours"):
        table.add_column(col)
    for alert in found:
        table.add_row(
            alert.rule,
            alert.dimension,
            f"{alert.figure:.4g}",
            f"{alert.baseline:.4g}",
            f"{alert.first_hour:%Y-%m-%d %H:00}",
            str(alert.hours),
        )
    console.print(table)
    figures: dict[str, Any] = {"alerts": [a.as_dict() for a in found]}
    if args.prometheus_rules:
        path = write_prometheus_rules(args.prometheus_rules, rules)
        console.print(f"Prometheus rules written to {path}")
        figures["prometheus_rules"] = str(path)
    write_json(figures, args.json)
    return figures


def _batch(args: argparse.Namespace, store: Any, console: Console) -> dict[str, Any]:
    from graphthrift.ops.batch import BatchJobs, list_jobs

    command = args.batch_command
    if command == "list":
        rows = list_jobs(store, status=args.status, limit=args.limit)
        table = Table(title="graphthrift batch jobs")
        columns = ["id", "provider", "model", "status", "round", "requests", "succeeded", "failed"]
        for col in columns:
            table.add_column(col)
        for row in rows:
            table.add_row(*("∅" if row[c] is None else str(row[c]) for c in columns))
        console.print(table)
        figures: dict[str, Any] = {"jobs": rows}
    elif command == "status":
        figures = _jobs_for(store, args.job_id, BatchJobs).status(args.job_id)
        for key, value in figures.items():
            console.print(f"{key}: {value}")
    elif command == "resume":
        from graphthrift.ledger.ledger import Ledger

        ledger = Ledger(store)
        try:
            jobs = _jobs_for(store, args.job_id, BatchJobs, ledger=ledger, poll=args.poll_interval)
            outcomes = jobs.run(args.job_id, timeout=args.timeout)
        finally:
            ledger.close()
        ok = sum(1 for o in outcomes if o.ok)
        figures = {"job_id": args.job_id, "succeeded": ok, "failed": len(outcomes) - ok}
        console.print(f"job {args.job_id}: {ok} succeeded, {len(outcomes) - ok} failed")
    else:
        raise ValueError("graphthrift batch needs a command: list, status or resume")
    write_json(figures, getattr(args, "json", None))
    return figures


def _jobs_for(
    store: Any, job_id: str, jobs_cls: Any, *, ledger: Any = None, poll: float = 5.0
) -> Any:
    """``BatchJobs`` for the stored job's provider, with a client built from the environment."""
    from sqlalchemy import text

    from graphthrift.ops.batch import AnthropicBatches, BatchJobNotFound, OpenAIBatches
    from graphthrift.ops.schema import BATCH_JOBS_TABLE

    with store.connect() as conn:
        provider = conn.execute(
            text(f"SELECT provider FROM {BATCH_JOBS_TABLE} WHERE id = :id"), {"id": job_id}
        ).scalar()
    if provider is None:
        raise BatchJobNotFound(job_id)
    client: Any
    if provider == "anthropic":
        import anthropic

        client = AnthropicBatches(anthropic.Anthropic())
    else:
        import openai

        client = OpenAIBatches(openai.OpenAI())
    return jobs_cls(
        store, client, ledger=ledger, poll_interval=poll, max_poll_interval=max(poll, 300.0)
    )
