"""The ``graphthrift`` command: cost reports and benchmarks.

``graphthrift report --by tenant_id,node`` prints a rich table (``--json PATH`` writes it);
``graphthrift bench <name>`` runs one benchmark and ``graphthrift bench`` runs them all
(``graphthrift.bench.command``; definitions in docs/benchmarks.md).

``report`` only reads: it names the database it reads, and refuses (exit 1) a store that
does not exist yet instead of creating an empty one, so a report run from the wrong folder
says so rather than showing nothing.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.measure import Measurement
from rich.table import Table

from graphthrift.bench import command as bench_cli
from graphthrift.bench.command import write_json
from graphthrift.cli import cache as cache_cli
from graphthrift.cli import ops as ops_cli
from graphthrift.errors import GraphthriftError


def _since(value: str) -> datetime:
    """An ISO date/time, or a relative span such as ``7d`` or ``12h``."""
    value = value.strip()
    units = {"d": "days", "h": "hours", "m": "minutes"}
    if value[-1:] in units and value[:-1].isdigit():
        return datetime.now(UTC) - timedelta(**{units[value[-1]]: int(value[:-1])})
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"--since takes an ISO date (2026-11-01) or a span (7d, 12h), got {value!r}"
        ) from exc
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and docs)."""
    parser = argparse.ArgumentParser(
        prog="graphthrift", description="Make LLM agent graphs cheap without making them worse."
    )
    parser.add_argument(
        "--url",
        help="PostgreSQL URL (default: GRAPHTHRIFT_DATABASE_URL, else the embedded server in ./.graphthrift)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    report = sub.add_parser("report", help="cost report from the ledger, grouped by tags")
    report.add_argument(
        "--by",
        default="tenant_id",
        help="comma-separated keys: tenant_id, feature, route, prompt_version, model, node, thread_id, run_id, day, kind, layer",
    )
    report.add_argument(
        "--since", type=_since, help="only records at or after this time (ISO date or 7d / 12h)"
    )
    report.add_argument("--until", type=_since, help="only records before this time")
    report.add_argument("--tenant-id", dest="tenant_id", help="only this tenant")
    report.add_argument("--feature", help="only this feature")
    report.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    report.add_argument(
        "--home",
        metavar="DIR",
        help="the embedded store's folder (default: GRAPHTHRIFT_HOME, else ./.graphthrift)",
    )
    ops_cli.extend_report(report)

    cache_cli.add_parser(sub)
    ops_cli.add_parsers(sub)

    bench_cli.add_parser(sub)
    return parser


class StoreNotFound(GraphthriftError, FileNotFoundError):
    """``report`` was pointed at a store that does not exist; carries where it looked."""

    def __init__(self, where: str, reason: str) -> None:
        self.where = where
        super().__init__(
            f"no graphthrift ledger at {where}: {reason}. Run the report from the folder your "
            "app runs in, or point it at the store with --home DIR (or GRAPHTHRIFT_HOME) or "
            "--url postgresql://... (or GRAPHTHRIFT_DATABASE_URL); nothing was created"
        )


def _existing_store(args: argparse.Namespace) -> Any:
    """The store to report on, opened only if it already exists (a report never creates one)."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import SQLAlchemyError

    from graphthrift.ledger.schema import LEDGER_TABLE
    from graphthrift.store.postgres import DEFAULT_HOME, Store, driver_url, hide_password

    url = args.url or os.environ.get("GRAPHTHRIFT_DATABASE_URL") or None
    home = Path(
        getattr(args, "home", None) or os.environ.get("GRAPHTHRIFT_HOME") or DEFAULT_HOME
    ).expanduser()
    home = home.resolve()
    if url is None:
        pgdata = home / "pgdata"
        if not (pgdata / "PG_VERSION").exists():
            raise StoreNotFound(f"{home}", f"there is no embedded database in {pgdata}")
        return Store(home=home)
    engine = create_engine(driver_url(url, "psycopg"))
    try:
        with engine.connect() as conn:
            found = conn.execute(text("SELECT to_regclass(:t)"), {"t": LEDGER_TABLE}).scalar()
    except SQLAlchemyError as exc:
        raise StoreNotFound(
            hide_password(url), f"the database cannot be read ({exc.__class__.__name__})"
        ) from exc
    finally:
        engine.dispose()
    if found is None:
        raise StoreNotFound(hide_password(url), "the database has no ledger table yet")
    return Store(url)


def _report_store(args: argparse.Namespace, console: Console) -> Any:
    """``_existing_store``, after saying which database the report reads."""
    store = _existing_store(args)
    where = (
        f"embedded PostgreSQL in {store.home} ({store.display_url})"
        if store.embedded
        else store.display_url
    )
    console.print(f"ledger: {where}", soft_wrap=True)
    return store


def _cost_cell(row: dict[str, Any], key: str) -> str:
    """A cost that says when models had no price, instead of passing them off as free."""
    value = row.get(key)
    unpriced = int(row.get("unpriced") or 0)
    if key != "cost_usd" or not unpriced:
        return f"{(value or 0.0):.6f}"
    if value is None:
        return f"n/a ({unpriced} unpriced)"
    return f"{value:.6f} + {unpriced} unpriced"


def _report(args: argparse.Namespace, console: Console) -> dict[str, Any]:
    from graphthrift.ledger.ledger import Ledger
    from graphthrift.ledger.query import bounds_shown_by_caller

    by = ops_cli.comma_list(args.by)
    filters = {k: getattr(args, k) for k in ("tenant_id", "feature") if getattr(args, k)}
    store = _report_store(args, console)
    ledger = Ledger(store)
    try:
        with bounds_shown_by_caller():  # printed below, not logged too
            rows = ledger.report(by, since=args.since, until=args.until, **filters)
    finally:
        ledger.close()
        store.close()
    if rows.range.bounded:
        console.print(f"[yellow]{rows.range.bounded}[/yellow]", soft_wrap=True)
    for row in rows:
        # An LLM row without a price has no known cost: None, never 0.0 (issue 11.10).
        if row.get("requests") and row.get("unpriced") == row["requests"]:
            row["cost_usd"] = None
    table = Table(title=f"graphthrift report by {', '.join(by)}")
    columns = [
        *by,
        "requests",
        "records",
        "input_tokens",
        "output_tokens",
        "cached_tokens",
        "cache_write_tokens",
        "cost_usd",
        "cache_savings_usd",
        "saved_usd",
        "success_rate",
    ]
    if any(row.get("unpriced") for row in rows):
        columns.insert(columns.index("cost_usd") + 1, "unpriced")
    for col in columns:
        table.add_column(col, justify="left" if col in by else "right")
    for row in rows:
        cells = []
        for col in columns:
            value = row.get(col)
            if col in ("cost_usd", "cache_savings_usd", "saved_usd"):
                cells.append(_cost_cell(row, col))
            elif col == "success_rate":
                cells.append("-" if value is None else f"{value:.1%}")
            elif isinstance(value, int):
                cells.append(f"{value:,}")
            else:
                cells.append("∅" if value is None else str(value))
        table.add_row(*cells)
    # Print every figure in full rather than cut to the terminal: a report is read, not skimmed.
    wide = Measurement.get(console, console.options.update_width(10_000), table).maximum
    narrow = console.width
    console.width = max(narrow, wide)
    try:
        console.print(table)
    finally:
        console.width = narrow
    figures = {"by": by, "rows": rows, "bounded": rows.range.bounded}
    write_json(figures, args.json)
    return figures


#: Columns of the output when it is not a terminal and ``COLUMNS`` is unset.
PIPED_WIDTH = 160


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``graphthrift`` command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    console = Console()
    if not console.is_terminal and "COLUMNS" not in os.environ:
        # a pipe or a log file: rich would cut every table to 80 columns ("sa…", "0.…")
        console.width = PIPED_WIDTH
    try:
        if args.command == "report" and ops_cli.handles_report(args):
            ops_cli.report(args, console, lambda: _report_store(args, console))
        elif args.command == "report":
            _report(args, console)
        elif args.command == "cache":
            cache_cli.run(args, console)
        elif args.command in ops_cli.COMMANDS:
            ops_cli.run(args, console)
        elif args.command == "bench":
            return bench_cli.run(args, console)
        else:
            parser.print_help()
            return 0 if args.command is None else 2
    except (GraphthriftError, ValueError) as exc:
        console.print(f"[bold red]error:[/] {exc}")
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
