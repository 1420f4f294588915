"""Cost per successful task: outcomes from mark_task and from LangGraph runs, the grouped
report with retry and cache savings, and the prompt-version comparison's interval."""

from __future__ import annotations

import itertools
import json
import random
import uuid
from pathlib import Path
from typing import Any, TypedDict

import pytest
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage
from langgraph.graph import START, StateGraph

from graphthrift import CostTagger, Ledger, Store, mark_task
from graphthrift.kernel import bound_run_tags
from graphthrift.langchain import TaskTracker
from graphthrift.ledger import LedgerRecord
from graphthrift.ops.tasks import TaskNotIdentified, compare, cost_per_task


def llm(tenant: str, run_id: str, version: str, cost: float, **kw: Any) -> LedgerRecord:
    return LedgerRecord(
        tenant_id=tenant,
        run_id=run_id,
        prompt_version=version,
        model="gpt-4o-mini",
        input_tokens=100,
        output_tokens=10,
        cost_usd=cost,
        **kw,
    )


def test_cost_per_successful_task_by_prompt_version_with_retries_and_cache(
    ledger: Ledger, store: Store, tenant: str
) -> None:
    rng = random.Random(7)
    expected: dict[str, dict[str, float]] = {}
    for version, n_tasks, p_success in (("v1", 12, 0.75), ("v2", 9, 0.4)):
        cost = succ = fail = retry_cost = cache = 0.0
        for _ in range(n_tasks):
            run = uuid.uuid4().hex
            first = round(rng.uniform(0.001, 0.01), 6)
            ledger.record(llm(tenant, run, version, first))
            cost += first
            if rng.random() < 0.3:  # a retried call
                again = round(rng.uniform(0.001, 0.01), 6)
                ledger.record(llm(tenant, run, version, again, retry=True, attempt=2))
                cost += again
                retry_cost += again
            if rng.random() < 0.5:
                ledger.record(
                    LedgerRecord(
                        kind="cache_hit",
                        tenant_id=tenant,
                        run_id=run,
                        prompt_version=version,
                        saved_usd=0.002,
                    )
                )
                cache += 0.002
            ok = rng.random() < p_success
            mark_task(success=ok, ledger=ledger, run_id=run, tenant_id=tenant)
            succ, fail = succ + ok, fail + (not ok)
        expected[version] = {
            "cost": cost,
            "succ": succ,
            "fail": fail,
            "retry": retry_cost,
            "cache": cache,
        }
    unmarked = uuid.uuid4().hex
    ledger.record(llm(tenant, unmarked, "v1", 0.5))  # nobody said how it went
    ledger.flush()

    rows = {
        r["prompt_version"]: r for r in cost_per_task(store, ["prompt_version"], tenant_id=tenant)
    }

    for version, exp in expected.items():
        row = rows[version]
        assert row["successful"] == exp["succ"] and row["failed"] == exp["fail"]
        assert row["cost_usd"] == pytest.approx(exp["cost"])
        assert row["cost_per_successful_task"] == pytest.approx(exp["cost"] / exp["succ"])
        assert row["retry_cost_usd"] == pytest.approx(exp["retry"])
        assert row["cache_saved_usd"] == pytest.approx(exp["cache"])
    assert rows["v1"]["unknown"] == 1 and rows["v1"]["unknown_cost_usd"] == pytest.approx(0.5)
    assert rows["v2"]["unknown"] == 0


def test_feedback_after_the_run_overrides_the_graph_outcome(
    ledger: Ledger, store: Store, tenant: str
) -> None:
    run = uuid.uuid4().hex
    ledger.record(llm(tenant, run, "v1", 0.01))
    mark_task(success=True, ledger=ledger, run_id=run, tenant_id=tenant)
    ledger.flush()
    [row] = cost_per_task(store, [], tenant_id=tenant)
    assert row["successful"] == 1
    mark_task(success=False, ledger=ledger, run_id=run, tenant_id=tenant)  # user thumbs-down
    ledger.flush()
    [row] = cost_per_task(store, [], tenant_id=tenant)
    assert row["successful"] == 0 and row["failed"] == 1
    assert row["cost_per_successful_task"] is None


def test_mark_task_needs_a_task_and_reads_bound_run_tags(ledger: Ledger, tenant: str) -> None:
    with pytest.raises(TaskNotIdentified, match="run_id or thread_id"):
        mark_task(success=True, ledger=ledger)
    with bound_run_tags({"tenant_id": tenant, "thread_id": "th-1"}):
        record = mark_task(success=True, ledger=ledger)
    assert record.thread_id == "th-1" and record.tenant_id == tenant and record.kind == "task"
    with pytest.raises(TypeError, match="True or False"):
        mark_task(success="yes", ledger=ledger, run_id="r")  # type: ignore[arg-type]


class Ticket(TypedDict):
    question: str
    answer: str
    resolved: bool


def test_a_langgraph_run_outcome_is_the_task_outcome(
    ledger: Ledger, store: Store, tenant: str
) -> None:
    usage = {"input_tokens": 900, "output_tokens": 80, "total_tokens": 980}
    reply = AIMessage("done", usage_metadata=usage, response_metadata={"model_name": "gpt-4o-mini"})
    model = GenericFakeChatModel(messages=itertools.repeat(reply))

    def agent(state: Ticket) -> dict[str, Any]:
        if state["question"] == "crash":
            model.invoke(state["question"])
            raise RuntimeError("tool broke")
        answer = model.invoke(state["question"])
        return {"answer": answer.content, "resolved": state["question"] != "hard"}

    graph = StateGraph(Ticket)
    graph.add_node("agent", agent)
    graph.add_edge(START, "agent")
    app = graph.compile()
    config = {
        "callbacks": [CostTagger(ledger), TaskTracker(ledger, success=lambda s: s["resolved"])],
        "metadata": {"tenant_id": tenant, "prompt_version": "v9"},
    }
    for question in ("easy", "hard", "easy"):
        app.invoke({"question": question, "answer": "", "resolved": False}, config=config)
    with pytest.raises(RuntimeError):
        app.invoke({"question": "crash", "answer": "", "resolved": False}, config=config)
    ledger.flush()

    rows = ledger.records(tenant_id=tenant)
    tasks = [r for r in rows if r["kind"] == "task"]
    calls = [r for r in rows if r["kind"] == "llm"]
    assert len(tasks) == 4 and len(calls) == 4
    assert {r["run_id"] for r in tasks} == {r["run_id"] for r in calls}
    assert sorted(r["success"] for r in tasks) == [False, False, True, True]
    [row] = cost_per_task(store, ["prompt_version"], tenant_id=tenant)
    assert row["tasks"] == 4 and row["successful"] == 2
    total = sum(r["cost_usd"] for r in calls)
    assert row["cost_per_successful_task"] == pytest.approx(total / 2)


def _tasks(ledger: Ledger, tenant: str, version: str, costs: list[float], oks: list[bool]) -> None:
    for cost, ok in zip(costs, oks, strict=True):
        run = uuid.uuid4().hex
        ledger.record(llm(tenant, run, version, cost))
        mark_task(success=ok, ledger=ledger, run_id=run, tenant_id=tenant)


def test_rows_run_from_no_success_to_the_cheapest_per_success(
    ledger: Ledger, store: Store, tenant: str
) -> None:
    """A group whose successes cost nothing is the cheapest, not (as 0.0 read as "none")
    the dearest; groups without a success come first, ties in group order."""
    _tasks(ledger, tenant, "free", [0.0, 0.0], [True, True])
    _tasks(ledger, tenant, "dear", [0.04, 0.02], [True, False])
    _tasks(ledger, tenant, "cheap", [0.01, 0.01], [True, True])
    _tasks(ledger, tenant, "failed-b", [0.01], [False])
    _tasks(ledger, tenant, "failed-a", [0.02], [False])
    ledger.flush()
    rows = cost_per_task(store, ["prompt_version"], tenant_id=tenant)
    assert [r["prompt_version"] for r in rows] == ["failed-a", "failed-b", "dear", "cheap", "free"]
    assert rows[-1]["cost_per_successful_task"] == 0.0


def test_compare_prompt_versions_with_a_bootstrap_interval(
    ledger: Ledger, store: Store, tenant: str
) -> None:
    rng = random.Random(3)
    base = [rng.uniform(0.004, 0.006) for _ in range(80)]
    oks = [rng.random() < 0.8 for _ in range(80)]
    _tasks(ledger, tenant, "v1", base, oks)
    _tasks(ledger, tenant, "v2", [2 * c for c in base], oks)  # a regression: twice the cost
    _tasks(ledger, tenant, "v1-copy", base, oks)
    ledger.flush()

    worse = compare(store, "prompt_version", ["v1", "v2"], tenant_id=tenant)
    same = compare(store, "prompt_version", ["v1", "v1-copy"], tenant_id=tenant)

    true_delta = sum(base) / sum(oks)
    assert worse["delta"] == pytest.approx(true_delta)
    assert worse["delta_pct"] == pytest.approx(100.0)
    assert 0 < worse["ci_low"] < worse["delta"] < worse["ci_high"]
    assert same["delta"] == pytest.approx(0.0, abs=1e-12)
    assert same["ci_low"] < 0 < same["ci_high"]
    with pytest.raises(ValueError, match="two values"):
        compare(store, "prompt_version", ["v1"], tenant_id=tenant)
    with pytest.raises(ValueError, match="cannot compare by colour: "):
        compare(store, "colour", ["a", "b"])


def test_cli_report_per_task_and_compare(
    ledger: Ledger, store: Store, tenant: str, tmp_path: Path
) -> None:
    from graphthrift.cli import main

    _tasks(ledger, tenant, "v1", [0.01, 0.02, 0.03], [True, True, False])
    _tasks(ledger, tenant, "v2", [0.01, 0.01, 0.01], [True, True, True])
    ledger.flush()
    per = tmp_path / "per.json"
    url = ["--url", store.url]
    assert (
        main(
            [
                *url,
                "report",
                "--per",
                "task",
                "--by",
                "prompt_version",
                "--tenant-id",
                tenant,
                "--json",
                str(per),
            ]
        )
        == 0
    )
    rows = {r["prompt_version"]: r for r in json.loads(per.read_text())["rows"]}
    assert rows["v1"]["cost_per_successful_task"] == pytest.approx(0.06 / 2)
    assert rows["v2"]["cost_per_successful_task"] == pytest.approx(0.03 / 3)
    cmp_path = tmp_path / "cmp.json"
    assert (
        main(
            [
                *url,
                "report",
                "--compare",
                "prompt_version=v1,v2",
                "--tenant-id",
                tenant,
                "--json",
                str(cmp_path),
            ]
        )
        == 0
    )
    figures = json.loads(cmp_path.read_text())
    assert figures["delta"] == pytest.approx(0.01 - 0.03)
    assert main([*url, "report", "--compare", "prompt_version=v1", "--tenant-id", tenant]) == 1


def test_cli_task_reports_read_the_home_they_are_given_and_create_none(
    ledger: Ledger,
    store: Store,
    tenant: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``report --per task`` and ``--compare`` read the store plain ``report`` reads
    (``--home``), say which, and never create an empty one in the working folder."""
    from graphthrift.cli import main

    if not store.embedded:
        pytest.skip("--home names an embedded store; this run's store is a URL")
    _tasks(ledger, tenant, "v1", [0.01, 0.02], [True, True])
    _tasks(ledger, tenant, "v2", [0.01, 0.01], [True, True])
    ledger.flush()
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GRAPHTHRIFT_HOME", raising=False)
    monkeypatch.delenv("GRAPHTHRIFT_DATABASE_URL", raising=False)
    per = tmp_path / "per.json"
    home = ["report", "--home", str(store.home), "--tenant-id", tenant]
    assert main([*home, "--per", "task", "--by", "prompt_version", "--json", str(per)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"ledger: embedded PostgreSQL in {store.home}")
    assert "unknown_cost_usd" in out  # the cost of tasks without an outcome is shown
    assert {r["prompt_version"] for r in json.loads(per.read_text())["rows"]} == {"v1", "v2"}
    cmp_path = tmp_path / "cmp.json"
    assert main([*home, "--compare", "prompt_version=v1,v2", "--json", str(cmp_path)]) == 0
    assert json.loads(cmp_path.read_text())["delta"] == pytest.approx(0.01 - 0.015)
    for extra in (["--per", "task"], ["--compare", "prompt_version=v1,v2"]):
        assert main(["report", *extra]) == 1  # no store here: said, not created
    assert not (tmp_path / ".graphthrift").exists(), "an empty database was created"


def test_a_thread_can_be_the_task(ledger: Ledger, store: Store, tenant: str) -> None:
    """Three runs of one conversation are one task when asked per thread."""
    for n in range(3):
        ledger.record(llm(tenant, f"run-{n}-{tenant}", "v1", 0.01, thread_id=f"th-{tenant}"))
    mark_task(success=True, ledger=ledger, thread_id=f"th-{tenant}", tenant_id=tenant)
    ledger.flush()
    [per_thread] = cost_per_task(store, [], task="thread_id", tenant_id=tenant)
    [per_run] = cost_per_task(store, [], tenant_id=tenant)
    assert per_thread["tasks"] == 1 and per_thread["successful"] == 1
    assert per_thread["cost_per_successful_task"] == pytest.approx(0.03)
    assert per_run["tasks"] == 3 and per_run["unknown"] == 3  # no run was given an outcome
    with pytest.raises(ValueError, match="cannot count tasks by node: "):
        cost_per_task(store, [], task="node")
