"""A LangGraph run cut short by a drain resumes, in the next process, from its checkpointer.

The checkpointer is LangGraph's own ``InMemorySaver`` backed by LangGraph's ``PersistentDict``
(pickle files written when the saver closes, i.e. at a clean exit): neither the SQLite nor the
Postgres saver is installed here, and ``InMemorySaver`` alone would not survive the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import operator
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Annotated, TypedDict

import pytest
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph

from graphthrift import Ledger, Store
from graphthrift.errors import ShuttingDown
from graphthrift.langgraph import aresume_interrupted, resume_interrupted, unit_config
from graphthrift.resilience import GracefulShutdown

_ENV = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
_GUARD = 120  # seconds: a hang, not a timing

_GRAPH = textwrap.dedent(
    """
    import json, operator, os, sys, threading, time
    from pathlib import Path
    from typing import Annotated, TypedDict
    from langgraph.checkpoint.memory import InMemorySaver, PersistentDict
    from langgraph.graph import END, START, StateGraph
    from graphthrift import Ledger, Store
    from graphthrift.langgraph import resume_interrupted
    from graphthrift.resilience import GracefulShutdown

    mode, tenant, folder = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    ran = folder / "ran.log"

    def durable_saver():
        names = iter(("storage", "writes", "blobs"))  # InMemorySaver's three maps, in order

        def factory(*args):
            d = PersistentDict(*args, filename=str(folder / f"{next(names)}.pickle"))
            if os.path.exists(d.filename):
                d.load()
            return d

        return InMemorySaver(factory=factory)

    class State(TypedDict):
        steps: Annotated[list[str], operator.add]

    def step(name, stall=False):
        def node(state):
            with ran.open("a") as f:
                f.write(name + "\\n")
            if stall:
                print("stalled", flush=True)
                while True:
                    time.sleep(0.05)
            return {"steps": [name]}
        return node

    builder = StateGraph(State)
    builder.add_node("plan", step("plan"))
    builder.add_node("act", step("act", stall=mode == "first"))
    builder.add_edge(START, "plan")
    builder.add_edge("plan", "act")
    builder.add_edge("act", END)

    store = Store(home=os.environ["GRAPHTHRIFT_HOME"])
    ledger = Ledger(store, flush_interval=0.05)
    with durable_saver() as saver:
        graph = builder.compile(checkpointer=saver)
        if mode == "first":
            shutdown = GracefulShutdown(ledger=ledger, grace_s=1)
            shutdown.install()  # SIGTERM: drain, mark the run interrupted, exit cleanly

            def run():
                config = {"configurable": {"thread_id": f"{tenant}-thread"}}
                with shutdown.work(thread_id=f"{tenant}-thread", tenant_id=tenant,
                                   payload={"steps": []}):
                    graph.invoke({"steps": []}, config, durability="sync")

            threading.Thread(target=run, daemon=True).start()
            while True:
                time.sleep(0.05)
        else:
            report = resume_interrupted(graph, GracefulShutdown(ledger=ledger), tenant_id=tenant)
            print(json.dumps({"resumed": len(report.resumed),
                              "states": list(report.results.values())}), flush=True)
    ledger.close()
    """
)


def _run(mode: str, tenant: str, folder: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", _GRAPH, mode, tenant, str(folder)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_ENV,
    )


def test_a_run_interrupted_by_a_drain_continues_from_its_checkpoint_in_the_next_process(
    store: Store, ledger: Ledger, tenant: str, tmp_path: Path
) -> None:
    first = _run("first", tenant, tmp_path)
    try:
        assert first.stdout is not None
        line = first.stdout.readline().strip()
        assert line == "stalled", first.stderr.read() if first.stderr else ""
        first.send_signal(signal.SIGTERM)
        _, err = first.communicate(timeout=_GUARD)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, err
    [unit] = GracefulShutdown(store=store).interrupted(tenant_id=tenant)
    assert unit.thread_id == f"{tenant}-thread"

    second = _run("resume", tenant, tmp_path)
    out, err = second.communicate(timeout=_GUARD)
    assert second.returncode == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert result == {"resumed": 1, "states": [{"steps": ["plan", "act"]}]}
    # "plan" finished before the stop: it is not run again; "act" ran once cut short, once whole
    assert (tmp_path / "ran.log").read_text().split() == ["plan", "act", "act"]
    assert GracefulShutdown(store=store).interrupted(tenant_id=tenant) == []
    [booked] = ledger.records(tenant_id=tenant, kind="interrupted")
    assert booked["thread_id"] == f"{tenant}-thread"


class _State(TypedDict):
    steps: Annotated[list[str], operator.add]


def _graph(saver: InMemorySaver) -> object:
    builder = StateGraph(_State)
    builder.add_node("plan", lambda s: {"steps": ["plan"]})
    builder.add_node("act", lambda s: {"steps": ["act"]})
    builder.add_edge(START, "plan")
    builder.add_edge("plan", "act")
    builder.add_edge("act", END)
    return builder.compile(checkpointer=saver)


def _interrupt(ledger: Ledger, tenant: str, thread: str, payload: object) -> None:
    shutdown = GracefulShutdown(ledger=ledger)
    try:
        with shutdown.work(thread_id=thread, tenant_id=tenant, payload=payload):
            raise SystemExit(0)
    except SystemExit:
        pass


def test_without_a_checkpoint_the_run_starts_again_from_its_payload(
    ledger: Ledger, tenant: str
) -> None:
    _interrupt(ledger, tenant, f"{tenant}-a", {"steps": ["given"]})
    graph = _graph(InMemorySaver())  # the checkpoints died with the "previous process"
    report = resume_interrupted(graph, GracefulShutdown(ledger=ledger), tenant_id=tenant)
    assert list(report.results.values()) == [{"steps": ["given", "plan", "act"]}]


def test_a_run_that_had_reached_its_end_is_marked_done_without_running_again(
    ledger: Ledger, tenant: str
) -> None:
    saver = InMemorySaver()
    graph = _graph(saver)
    config = {"configurable": {"thread_id": f"{tenant}-b"}}
    graph.invoke({"steps": []}, config)  # type: ignore[attr-defined]
    written = len(list(saver.list(config)))  # type: ignore[arg-type]
    _interrupt(ledger, tenant, f"{tenant}-b", None)  # stopped after its last step
    shutdown = GracefulShutdown(ledger=ledger)
    report = resume_interrupted(graph, shutdown, tenant_id=tenant)
    assert list(report.results.values()) == [{"steps": ["plan", "act"]}]
    assert len(list(saver.list(config))) == written  # type: ignore[arg-type]  # nothing new
    assert shutdown.interrupted(tenant_id=tenant) == []


def test_a_unit_without_a_thread_is_left_to_other_resumers(ledger: Ledger, tenant: str) -> None:
    shutdown = GracefulShutdown(ledger=ledger)
    try:
        with shutdown.work("plain-job", tenant_id=tenant):
            raise SystemExit(0)
    except SystemExit:
        pass
    [unit] = shutdown.interrupted(tenant_id=tenant)
    report = resume_interrupted(_graph(InMemorySaver()), shutdown, tenant_id=tenant)
    assert report.resumed == ()
    assert [u.unit_id for u in shutdown.interrupted(tenant_id=tenant)] == [unit.unit_id]
    try:
        unit_config(unit)
    except ValueError as exc:
        assert "no thread_id" in str(exc)
    else:
        raise AssertionError("a unit without a thread_id has no config to resume")


async def test_async_a_run_stopped_between_super_steps_continues_without_rerunning_them(
    ledger: Ledger, tenant: str
) -> None:
    ran: list[str] = []

    async def plan(state: _State) -> dict[str, list[str]]:
        ran.append("plan")
        return {"steps": ["plan"]}

    async def act(state: _State) -> dict[str, list[str]]:
        ran.append("act")
        return {"steps": ["act"]}

    builder = StateGraph(_State)
    builder.add_node("plan", plan)
    builder.add_node("act", act)
    builder.add_edge(START, "plan")
    builder.add_edge("plan", "act")
    builder.add_edge("act", END)
    saver = InMemorySaver()
    stopping = builder.compile(checkpointer=saver, interrupt_before=["act"])  # stops after plan
    graph = builder.compile(checkpointer=saver)
    thread = f"{tenant}-async"
    worker = GracefulShutdown(ledger=ledger)
    with contextlib.suppress(asyncio.CancelledError):
        async with worker.awork(thread_id=thread, tenant_id=tenant, payload={"steps": []}):
            await stopping.ainvoke({"steps": []}, {"configurable": {"thread_id": thread}})
            raise asyncio.CancelledError  # the server cancels the request as it stops
    [unit] = worker.interrupted(tenant_id=tenant)
    assert unit.reason == "stopped by CancelledError"

    report = await aresume_interrupted(graph, GracefulShutdown(ledger=ledger), tenant_id=tenant)
    assert list(report.results.values()) == [{"steps": ["plan", "act"]}]
    assert ran == ["plan", "act"]  # plan was not run again
    assert worker.interrupted(tenant_id=tenant) == []


async def test_async_work_is_refused_while_draining_and_done_when_it_finishes(
    ledger: Ledger, tenant: str
) -> None:
    shutdown = GracefulShutdown(ledger=ledger, grace_s=1)
    async with shutdown.awork("async-job", tenant_id=tenant) as unit:
        assert unit is not None and shutdown.in_flight == 1
    stored = shutdown.inflight.get(unit.unit_id)
    assert stored is not None and stored.status == "done"
    shutdown.drain()
    with pytest.raises(ShuttingDown):
        async with shutdown.awork("late", tenant_id=tenant):
            pass
    with pytest.raises(ShuttingDown):
        await shutdown.aresume_interrupted(lambda u: asyncio.sleep(0), tenant_id=tenant)


def test_a_resumed_run_carries_its_units_tenant_and_tags(ledger: Ledger, tenant: str) -> None:
    """One resumer serves every tenant: each run gets its own unit's tags back, over the
    resumer's config, so its prompt, cache, budget and ledger rows are its tenant's."""
    shutdown = GracefulShutdown(ledger=ledger)
    with (
        contextlib.suppress(SystemExit),
        shutdown.work(
            thread_id=f"{tenant}-tags",
            tenant_id=tenant,
            run_id="run-7",
            # as ``current_run_tags()`` gives them inside a node: where it ran is not carried
            tags={
                "user_id": "alice",
                "feature": "support",
                "run_id": "run-7",
                "thread_id": "elsewhere",
                "node": "agent",
            },
        ),
    ):
        raise SystemExit(0)
    [unit] = shutdown.interrupted(tenant_id=tenant)
    config = unit_config(unit, {"metadata": {"tenant_id": "other", "feature": "x", "k": 1}})
    assert config["metadata"] == {
        "tenant_id": tenant,
        "user_id": "alice",
        "feature": "support",
        "k": 1,
        "resumed_run_id": "run-7",
    }
    assert config["configurable"] == {"thread_id": f"{tenant}-tags"}
    claimed = shutdown.claim(unit)  # leave no interrupted unit to other tests' resumers
    assert claimed is not None
    shutdown.finish(claimed)
