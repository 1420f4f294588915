"""The ``graphthrift bench`` command: one bench, all of them, or the user's own traffic.

``graphthrift bench`` runs every layer's bench on the bundled data, then the savings stack,
and ends with one summary table (layer, figure, target, where the JSON and PNG went).
``--quick`` is the CI sample, ``--full`` the publication-grade run, ``--data DIR`` the data
folder, ``--traffic FILE`` replays logged requests instead (``bench.traffic``). A missing
data set is one line naming the set and how to get it; the other benches still run.
Definitions and the JSON contract: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import importlib
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from graphthrift.bench import BENCHMARKS
from graphthrift.bench._common import mode, write_json
from graphthrift.bench._data import DataSetMissing, data_dir, using_data_dir

__all__ = ["add_parser", "bench_modules", "headline", "run", "write_json"]

DEFAULT_OUT = Path("bench-results")
_MODE_HELP = {
    "--quick": "a small sample, for CI (about a minute)",
    "--full": "the publication-grade run (all of every data set; tens of minutes)",
}


def bench_modules() -> dict[str, Any]:
    """The importable bench modules, by name (a bench whose extra is missing is left out)."""
    modules = {}
    for name, path in BENCHMARKS.items():
        try:
            modules[name] = importlib.import_module(path)
        except ModuleNotFoundError as exc:
            if exc.name != path:  # a real missing dependency inside the benchmark
                raise
    return modules


def _common_options(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    """--json, --quick, --full, --data on the bench command and on every bench under it."""
    default: Any = argparse.SUPPRESS if suppress else None
    flag: Any = argparse.SUPPRESS if suppress else False
    parser.add_argument("--json", metavar="PATH", default=default, help="write the figures as JSON")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", default=flag, help=_MODE_HELP["--quick"])
    size.add_argument("--full", action="store_true", default=flag, help=_MODE_HELP["--full"])
    parser.add_argument(
        "--data",
        metavar="DIR",
        default=default,
        help="the data folder (default: GRAPHTHRIFT_DATA_DIR, else the checkout's data/)",
    )


def add_parser(sub: Any) -> Any:
    """Add ``bench`` (and one sub-command per bench) to the ``graphthrift`` parser."""
    bench = sub.add_parser(
        "bench",
        help="run the benchmarks (all of them when no name is given), or replay --traffic",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common_options(bench, suppress=False)
    from graphthrift.bench import traffic

    replay = bench.add_argument_group("--traffic FILE: replay your own logged requests")
    replay.add_argument(
        "--traffic",
        metavar="FILE",
        help="replay logged OpenAI chat-completions requests (JSONL) through the stack",
    )
    traffic.add_arguments(replay)
    bench_sub = bench.add_subparsers(dest="bench", metavar="NAME")
    for name, module in bench_modules().items():
        doc = (module.__doc__ or name).strip().splitlines()[0]
        one = bench_sub.add_parser(
            name,
            help=doc.split(":", 1)[-1].strip(),
            description=_for_users(module.__doc__ or ""),
            conflict_handler="resolve",  # a benchmark may refine --quick or --json
        )
        _common_options(one, suppress=True)
        module.add_arguments(one)
    return bench


def _for_users(doc: str) -> str:
    """A benchmark module's docstring as its ``--help``: without the "Long because:"
    paragraph, which tells maintainers why the module is long (tests/test_module_shape.py)."""
    paragraphs = doc.strip().split("\n\n")
    return "\n\n".join(p for p in paragraphs if not p.lstrip().startswith("Long because:"))


def run(args: argparse.Namespace, console: Console) -> int:
    """Run what ``args`` asks; the exit status (1 when the one bench asked for was skipped)."""
    with using_data_dir(getattr(args, "data", None)):
        if getattr(args, "traffic", None):
            from graphthrift.bench import traffic

            traffic.run(args, console)
            return 0
        if getattr(args, "bench", None):
            figures = _run_one(args.bench, bench_modules()[args.bench], args, console)
            return 1 if "skipped" in figures else 0
        run_all(args, console)
    return 0


def _run_one(name: str, module: Any, args: argparse.Namespace, console: Console) -> dict[str, Any]:
    """One bench; a missing data set becomes ``{"skipped": why, "missing": [set]}``."""
    try:
        figures: dict[str, Any] = module.run(args, console)
    except DataSetMissing as exc:
        console.print(f"[yellow]bench {name} skipped: {exc}[/]", soft_wrap=True)
        figures = {"skipped": str(exc), "missing": [exc.dataset]}
        write_json(figures, getattr(args, "json", None))
    return figures


def run_all(args: argparse.Namespace, console: Console) -> dict[str, Any]:
    """Every layer's bench, then the savings stack; one JSON object per layer.

    ``bench.json`` holds each bench's figures under its name and ``stack`` as
    docs/benchmarks.md fixes it (a list of {layer, cost_usd, saved_fraction, quality}), with
    the stack's full detail under ``stack_detail``. Each bench's figures also go to
    ``<name>.json`` beside it, and the waterfall to ``stack.png``.
    """
    from graphthrift.cli import build_parser

    target = Path(args.json) if args.json else DEFAULT_OUT / "bench.json"
    out_dir = target.parent
    parser = build_parser()
    modules = bench_modules()
    results: dict[str, Any] = {}
    files: dict[str, list[str]] = {}
    seconds: dict[str, float] = {}
    skipped: list[str] = []
    size = mode(args)
    where = data_dir()
    console.print(
        f"graphthrift bench ({size} run) on data from {where if where else 'nowhere (no data folder)'}"
    )
    for i, (name, module) in enumerate(modules.items(), start=1):
        console.rule(f"graphthrift bench {name} ({i}/{len(modules)})")
        argv = ["bench", name] + {"quick": ["--quick"], "full": ["--full"], "default": []}[size]
        if args.url:
            argv = ["--url", args.url, *argv]
        sub_args = parser.parse_args(argv)
        sub_args.json = str(out_dir / f"{name}.json")
        if name == "stack":
            sub_args.png = str(out_dir / "stack.png")
        started = time.perf_counter()
        results[name] = _run_one(name, module, sub_args, console)
        seconds[name] = round(time.perf_counter() - started, 1)
        if "skipped" in results[name]:
            skipped.append(name)
        files[name] = [sub_args.json] + ([results[name]["png"]] if "png" in results[name] else [])
    if "stack" in results:
        detail = results.pop("stack")
        results["stack"] = detail.get("stack", [])
        results["stack_detail"] = detail
    results["run"] = {"mode": size, "data": str(where) if where else None, "seconds": seconds}
    write_json(results, target)
    console.print(summary_table(results, files, seconds, target))
    if skipped:
        console.print(f"[yellow]skipped for missing data: {', '.join(skipped)}[/]")
    return results


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _get(figures: dict[str, Any], *path: str) -> Any:
    node: Any = figures
    for key in path:
        if not isinstance(node, dict):
            return None
        node = node.get(key)
    return node


def headline(name: str, figures: dict[str, Any]) -> list[tuple[str, Any, str]]:
    """The figures of bench ``name`` that the summary shows: (figure, value, target)."""
    if "skipped" in figures:
        return [("skipped: data missing", ", ".join(figures.get("missing", [])) or "-", "-")]

    def g(*path: str) -> Any:
        return _get(figures, *path)

    rows: dict[str, list[tuple[str, Any, str]]] = {
        "ledger": [
            ("CostTagger µs/call p50", g("tagger_overhead_us", "cost_tagger", "p50"), "<= 50"),
            ("ledger writes/s", g("write", "records_per_s"), ">= 20,000"),
            ("report s", g("report", "max_s"), "< 1"),
        ],
        "history": [
            # issue 16's targets: what the user pays, and the facts kept on long threads
            (
                "long set: effective saved (gpt-4o)",
                g("targets_issue16", "long_effective_saved_fraction", "value", "openai:gpt-4o"),
                ">= 0.8",
            ),
            (
                "long set: effective saved (claude-sonnet-4-5)",
                g(
                    "targets_issue16",
                    "long_effective_saved_fraction",
                    "value",
                    "anthropic:claude-sonnet-4-5",
                ),
                ">= 0.8",
            ),
            (
                "long set: facts kept",
                g("targets_issue16", "long_fact_retention", "value"),
                ">= 0.85",
            ),
            (
                "long set: facts 100+ turns back",
                g("targets_issue16", "long_fact_retention_100plus", "value"),
                ">= 0.8",
            ),
            ("pruning ms p95 per turn", g("ms_per_turn", "p95"), "< 2"),
            ("fact_retention (sgd)", g("targets", "fact_retention_sgd", "value"), ">= 0.9"),
        ],
        "compress": [
            ("answer_retention", g("answer_retention"), ">= 0.9"),
            ("ratio", g("ratio"), ">= 3"),
            ("ms per 1k tokens", g("ms_per_1k_tokens"), "<= 15"),
        ],
        "cache": [
            ("precision (tuned)", g("precision"), ">= 0.97"),
            ("hit_rate (tuned)", g("hit_rate"), "-"),
            ("lookup+embed p95 ms", g("total_ms", "p95"), "<= 10"),
        ],
        "route": [
            ("cheap_fraction", g("cheap_fraction"), "-"),
            ("quality vs always-strong", g("quality"), "-"),
            ("overhead p95 ms", g("overhead_ms", "p95"), "<= 1"),
        ],
        "budget": [
            ("overspend within one reservation", g("within_bound"), "yes"),
            ("reserve p95 ms", g("reserve_ms", "p95"), "-"),
        ],
        "resilience": [
            ("completion_rate", g("policies", "graphthrift", "completion_rate"), ">= 0.99"),
            ("duplicate_generations", g("policies", "graphthrift", "duplicate_generations"), "0"),
            ("calls for 50 identical", g("single_flight", "provider_calls"), "1"),
            ("no-fault overhead p95 ms", g("overhead_ms", "p95"), "< 1"),
        ],
        "ops": [
            ("anomaly caught within h", g("anomaly", "detected_within_hours"), "<= 2"),
            (
                "false alerts /week /20 series",
                g("anomaly", "false_alerts_per_week_per_20_series"),
                "<= 1",
            ),
            ("export s per 100k", g("export_seconds_100k"), "< 30"),
        ],
    }
    return rows.get(name, [])


def summary_table(
    results: dict[str, Any], files: dict[str, list[str]], seconds: dict[str, float], target: Path
) -> Table:
    """One table for the whole run: each layer, its figures, their targets, its files."""
    table = Table(title=f"graphthrift bench: summary (all figures in {target})")
    for col in ("layer", "figure", "value", "target", "seconds", "JSON / PNG"):
        table.add_column(col, justify="right" if col in ("value", "seconds") else "left")
    for name, paths in files.items():
        if name == "stack":
            rows = [
                (f"saved_fraction after {r['layer']}", r["saved_fraction"], "")
                for r in results.get("stack", [])[1:]
            ]
            if rows:
                rows[-1] = (rows[-1][0] + " (full stack)", rows[-1][1], ">= 0.62")
            detail = results.get("stack_detail") or {}
            if "skipped" in detail:
                rows = headline(name, detail)
        else:
            rows = headline(name, results.get(name) or {})
        for k, (figure, value, goal) in enumerate(rows or [("-", None, "-")]):
            table.add_row(
                name if k == 0 else "",
                figure,
                _fmt(value),
                goal,
                _fmt(seconds.get(name)) if k == 0 else "",
                ", ".join(paths) if k == 0 else "",
            )
    return table
