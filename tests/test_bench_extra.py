"""The bench's heavy dependencies sit behind the ``bench`` extra (issue 15.6).

Like tests/test_missing_extras.py, each check runs in a fresh interpreter whose import
system refuses the package, as on a core install without the extra.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from test_missing_extras import run_blocked

ROOT = Path(__file__).resolve().parents[1]


def test_matplotlib_is_in_the_bench_extra_not_the_core() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = [d.split(">")[0].split("[")[0] for d in project["dependencies"]]
    bench = [d.split(">")[0] for d in project["optional-dependencies"]["bench"]]
    assert "matplotlib" not in core
    assert "matplotlib" in bench


def test_the_core_and_the_cli_load_without_matplotlib() -> None:
    statement = (
        "import graphthrift.cli, graphthrift.bench.command, graphthrift.bench.stack; "
        "import graphthrift.store, graphthrift.ledger; "
        "graphthrift.cli.build_parser().parse_args(['report'])"
    )
    assert run_blocked({"matplotlib"}, statement) == {"imported": True}


def test_the_stack_chart_without_matplotlib_names_the_bench_extra(tmp_path: Path) -> None:
    statement = (
        "from graphthrift.bench.stack import waterfall; "
        f"waterfall([], {str(tmp_path / 'stack.png')!r})"
    )
    out = run_blocked({"matplotlib"}, statement)
    assert out["extra"] == "bench", out
    assert out["package"] == "matplotlib"
    assert not (tmp_path / "stack.png").exists()
