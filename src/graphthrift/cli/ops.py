"""Operations commands: ``graphthrift batch``.

    graphthrift batch list [--status S] [--limit N] [--json PATH]
    graphthrift batch status JOB_ID [--json PATH]
    graphthrift batch resume JOB_ID [--timeout S]   # poll, collect and book a stored job

``resume`` drives a job that a process left running (e.g. from a cron job): it builds the
provider's SDK client from its documented environment variables (``OPENAI_API_KEY`` /
``OPENAI_BASE_URL``, ``ANTHROPIC_API_KEY`` / ``ANTHROPIC_BASE_URL``), collects the results
and books them in the ledger once.
"""

from __future__ import annotations

import argparse
from typing import Any

from rich.console import Console
from rich.table import Table

from graphthrift.bench._common import write_json

__all__ = ["COMMANDS", "add_parsers", "run"]

#: The top-level commands this module owns.
COMMANDS = ("batch",)


def add_parsers(subparsers: Any) -> None:
    """Add the operations commands to the CLI's subparsers."""
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


def run(args: argparse.Namespace, console: Console) -> dict[str, Any]:
    """Run the operations command ``args`` names."""
    from graphthrift.store import Store

    store = Store(args.url)
    try:
        if args.command == "batch":
            return _batch(args, store, console)
        raise ValueError(f"unknown operations command {args.command!r}")
    finally:
        store.close()


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
        from graphthrift.ledger import Ledger

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

    from graphthrift._schema_batch import BATCH_JOBS_TABLE
    from graphthrift.ops.batch import AnthropicBatches, BatchJobNotFound, OpenAIBatches

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
