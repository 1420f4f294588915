"""A report grouped by a key it does not know names that key plainly, lists the valid
keys and suggests the close one (``thread`` -> ``thread_id``), from the CLI and Python."""

from __future__ import annotations

import pytest

from graphthrift import Ledger, Store
from graphthrift.errors import ConfigError, UnknownReportKey
from graphthrift.ledger.query import REPORT_KEYS
from graphthrift.ops.tasks import TASK_DIMENSIONS, compare, cost_per_task


def _said(capsys: pytest.CaptureFixture[str]) -> str:
    captured = capsys.readouterr()
    return " ".join((captured.out + captured.err).split())


@pytest.mark.parametrize(
    ("argv", "bad", "suggested", "choices"),
    [
        (["report", "--by", "thread"], "thread", "thread_id", REPORT_KEYS),
        (["report", "--by", "tenant_id,modle"], "modle", "model", REPORT_KEYS),
        (["report", "--per", "task", "--by", "tenant"], "tenant", "tenant_id", TASK_DIMENSIONS),
        (
            ["report", "--compare", "promptversion=v1,v2"],
            "promptversion",
            "prompt_version",
            TASK_DIMENSIONS,
        ),
    ],
)
def test_cli_names_the_bad_key_lists_the_valid_ones_and_suggests_one(
    store: Store,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    bad: str,
    suggested: str,
    choices: tuple[str, ...],
) -> None:
    from graphthrift.cli import main

    assert main(["--url", store.url, *argv]) == 1
    said = _said(capsys)
    assert "[" not in said and "'" not in said, said  # no Python list or repr
    assert f"cannot report by {bad}:" in said or f"cannot compare by {bad}:" in said, said
    assert f"did you mean {suggested}?" in said, said
    assert ", ".join(choices) in said, said


def test_cli_suggests_nothing_for_a_key_like_none(
    store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    from graphthrift.cli import main

    assert main(["--url", store.url, "report", "--by", "colour"]) == 1
    said = _said(capsys)
    assert "cannot report by colour:" in said and "did you mean" not in said
    assert ", ".join(REPORT_KEYS) in said


def test_ledger_report_raises_with_the_bad_key(ledger: Ledger) -> None:
    with pytest.raises(UnknownReportKey) as raised:
        ledger.report(["tenant_id", "thread"])
    err = raised.value
    assert isinstance(err, ConfigError) and isinstance(err, ValueError)  # as before
    assert (err.key, err.suggestion, err.choices) == ("thread", "thread_id", REPORT_KEYS)
    assert err.keys == ["thread"]
    assert str(err).startswith("cannot report by thread: ")
    with pytest.raises(UnknownReportKey) as several:
        ledger.report("colour,thread,day")
    assert (several.value.key, several.value.keys) == ("colour", ["colour", "thread"])
    assert "also unknown: thread" in str(several.value)


def test_task_reports_raise_with_the_bad_key(store: Store) -> None:
    with pytest.raises(UnknownReportKey) as by:
        cost_per_task(store, ["prompt"])
    assert (by.value.key, by.value.suggestion, by.value.choices) == (
        "prompt",
        "prompt_version",
        TASK_DIMENSIONS,
    )
    with pytest.raises(UnknownReportKey) as dim:
        compare(store, "thread_id", ["a", "b"])  # a task key, not a dimension
    assert dim.value.key == "thread_id" and dim.value.choices == TASK_DIMENSIONS
    with pytest.raises(UnknownReportKey) as task:
        cost_per_task(store, ["model"], task="thread")
    assert (task.value.key, task.value.suggestion) == ("thread", "thread_id")


@pytest.mark.parametrize(
    "argv",
    [
        ["report", "--per", "task", "--by", "tenant"],
        ["report", "--compare", "promptversion=v1,v2"],
        ["report", "--compare", "prompt_version=v1"],
    ],
)
def test_task_report_arguments_are_checked_before_the_database_is_read(
    capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    """A bad key or ``--compare`` spec is refused before the ledger is counted (on a big
    ledger that count comes first): with a server nobody listens on, the argument error is
    still what the user reads."""
    from graphthrift.cli import main

    dead = "postgresql+psycopg://u:p@127.0.0.1:9/none?connect_timeout=1"
    assert main(["--url", dead, *argv]) == 1
    said = _said(capsys)
    assert "cannot " in said or "--compare takes DIM=A,B" in said, said
    assert "unavailable" not in said.lower() and "connect" not in said.lower(), said
