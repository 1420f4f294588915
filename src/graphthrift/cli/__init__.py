"""The ``graphthrift`` command: cost reports and benchmarks.

``graphthrift report --by tenant_id,node`` prints a rich table (``--json PATH`` writes it);
``graphthrift bench <name>`` runs one benchmark and ``graphthrift bench`` runs them all.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from rich.console import Console
from rich.measure import Measurement
from rich.table import Table

from graphthrift.bench import BENCHMARKS
from graphthrift.bench._common import write_json
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


def _bench_modules() -> dict[str, Any]:
    modules = {}
    for name, path in BENCHMARKS.items():
        try:
            modules[name] = importlib.import_module(path)
        except ModuleNotFoundError as exc:
            if exc.name != path:  # a real missing dependency inside the benchmark
                raise
    return modules


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
    ops_cli.extend_report(report)

    cache_cli.add_parser(sub)
    ops_cli.add_parsers(sub)

    bench = sub.add_parser("bench", help="run a benchmark (all of them when no name is given)")
    bench.add_argument("--json", metavar="PATH", help="write the figures as JSON")
    bench.add_argument("--quick", action="store_true", help="a small sample, for CI")
    bench_sub = bench.add_subparsers(dest="bench", metavar="NAME")
    for name, module in _bench_modules().items():
        doc = (module.__doc__ or name).strip().splitlines()[0]
        one = bench_sub.add_parser(
            name,
            help=doc.split(":", 1)[-1].strip(),
            description=module.__doc__,
            conflict_handler="resolve",  # a benchmark may refine --quick or --json
        )
        one.add_argument(
            "--json", metavar="PATH", default=argparse.SUPPRESS, help="write the figures as JSON"
        )
        one.add_argument(
            "--quick", action="store_true", default=argparse.SUPPRESS, help="a small sample, for CI"
        )
        module.add_arguments(one)
    return parser


def _report(args: argparse.Namespace, console: Console) -> dict[str, Any]:
    from graphthrift.ledger import Ledger
    from graphthrift.store import Store

    by = [k.strip() for k in args.by.split(",") if k.strip()]
    filters = {k: getattr(args, k) for k in ("tenant_id", "feature") if getattr(args, k)}
    store = Store(args.url)
    ledger = Ledger(store)
    try:
        rows = ledger.report(by, since=args.since, until=args.until, **filters)
    finally:
        ledger.close()
        store.close()
    table = Table(title=f"graphthrift report by {', '.join(by)}")
    columns = [
        *by,
        "requests",
        "input_tokens",
        "output_tokens",
        "cached_tokens",
        "cache_write_tokens",
        "cost_usd",
        "cache_savings_usd",
        "saved_usd",
        "success_rate",
    ]
    for col in columns:
        table.add_column(col, justify="left" if col in by else "right")
    for row in rows:
        cells = []
        for col in columns:
            value = row.get(col)
            if col in ("cost_usd", "cache_savings_usd", "saved_usd"):
                cells.append(f"{value:.6f}")
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
    figures = {"by": by, "rows": rows}
    write_json(figures, args.json)
    return figures


def _bench_all(args: argparse.Namespace, console: Console) -> dict[str, Any]:
    """Run every layer's benchmark, then the savings stack; one JSON object per layer.

    The result holds each benchmark's figures under its name, and ``stack`` as DESIGN.md
    fixes it (a list of {layer, cost_usd, saved_fraction, quality}), with the stack's full
    detail under ``stack_detail``.
    """
    parser = build_parser()
    modules = _bench_modules()
    results: dict[str, Any] = {}
    for name, module in modules.items():
        console.rule(f"graphthrift bench {name}")
        argv = ["bench", name] + (["--quick"] if args.quick else [])
        if args.url:
            argv = ["--url", args.url, *argv]
        sub_args = parser.parse_args(argv)
        sub_args.json = None
        results[name] = module.run(sub_args, console)
    if "stack" in results:
        detail = results.pop("stack")
        results["stack"] = detail.get("stack", [])
        results["stack_detail"] = detail
    write_json(results, args.json or "bench-results/bench.json")
    console.print(f"figures written to {args.json or 'bench-results/bench.json'}")
    return results


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``graphthrift`` command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    console = Console()
    try:
        if args.command == "report" and ops_cli.handles_report(args):
            ops_cli.report(args, console)
        elif args.command == "report":
            _report(args, console)
        elif args.command == "cache":
            cache_cli.run(args, console)
        elif args.command in ops_cli.COMMANDS:
            ops_cli.run(args, console)
        elif args.command == "bench":
            if args.bench:
                _bench_modules()[args.bench].run(args, console)
            else:
                _bench_all(args, console)
        else:
            parser.print_help()
            return 0 if args.command is None else 2
    except (GraphthriftError, ValueError) as exc:
        console.print(f"[bold red]error:[/] {exc}")
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
