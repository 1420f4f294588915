"""BatchChatModel through the real ChatOpenAI and ChatAnthropic clients on the wire server.

Offline calls must reach the provider's Batch API (never the synchronous endpoint), come
back to their own callers, be retried one by one when they fail, survive a restart
without a second submission, and be booked once at the batch rate with route="batch".
"""

from __future__ import annotations

import asyncio
import json
import operator
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Annotated, Any, TypedDict

import pytest
from genai_prices import Usage, calc_price
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage
from langchain_core.runnables import RunnableConfig
from langgraph.graph import END, START, StateGraph
from langgraph.types import Send
from sqlalchemy import text
from wire_server import WireServer

from graphthrift import Ledger, Store
from graphthrift.langchain.batch import BatchChatModel
from graphthrift.ops.batch import BatchItemFailed, BatchJobTimeout

SRC = Path(__file__).resolve().parents[2] / "src"


def openai_chat(wire: WireServer) -> BaseChatModel:
    from langchain_openai import ChatOpenAI

    return ChatOpenAI(
        model="gpt-4o-mini", base_url=wire.openai_url, api_key="sk-test", max_retries=0
    )


def anthropic_chat(wire: WireServer) -> BaseChatModel:
    from langchain_anthropic import ChatAnthropic

    return ChatAnthropic(
        model="claude-haiku-4-5",
        base_url=wire.anthropic_url,
        api_key="sk-ant-test",
        max_retries=0,
        max_tokens=256,
    )


def batched(model: BaseChatModel, store: Store, ledger: Ledger, **kw: Any) -> BatchChatModel:
    options: dict[str, Any] = {"poll_interval": 0.01, "max_poll_interval": 0.05}
    options.update(kw)
    return BatchChatModel(model=model, store=store, ledger=ledger, **options)


def offline(tenant: str, **metadata: Any) -> dict[str, Any]:
    return {"metadata": {"graphthrift_batch": True, "tenant_id": tenant, **metadata}}


def rows(ledger: Ledger, tenant: str) -> list[dict[str, Any]]:
    ledger.flush()
    return ledger.records(tenant_id=tenant)


def uploaded_ids(wire: WireServer, upload: int) -> list[str]:
    """The custom_ids in the ``upload``-th JSONL file the client sent."""
    file_ids = [c.body["id"] for c in wire.requests if c.path == "/v1/files"]
    content = wire.files[file_ids[upload]].decode()
    return [json.loads(line)["custom_id"] for line in content.splitlines() if line]


def sync_price(model: str, input_tokens: int, output_tokens: int, **extra: int) -> float:
    """genai-prices' own standard (synchronous) price of one call."""
    return float(
        calc_price(
            Usage(input_tokens=input_tokens, output_tokens=output_tokens, **extra), model
        ).total_price
    )


def test_a_thousand_requests_cost_half_their_synchronous_price(
    wire: WireServer, store: Store, ledger: Ledger, tenant: str
) -> None:
    wire.batch_script(echo=True)
    model = batched(openai_chat(wire), store, ledger)
    prompts = [f"question {n}" for n in range(1_000)]

    answers = model.batch(prompts, config=offline(tenant, feature="evals"))

    assert [a.content for a in answers] == [f"echo: {p}" for p in prompts]
    assert len(wire.batch_requests("openai")) == 1
    assert wire.bodies("/v1/chat/completions") == []  # nothing went synchronously
    assert len(uploaded_ids(wire, 0)) == 1_000
    booked = rows(ledger, tenant)
    assert len(booked) == 1_000
    assert {r["route"] for r in booked} == {"batch"}
    assert {r["feature"] for r in booked} == {"evals"}
    assert all(r["extra"]["batch"] is True for r in booked)
    sync = 1_000 * sync_price("gpt-4o-mini", 42, 9)
    cost = sum(r["cost_usd"] for r in booked)
    saved = sum(r["saved_usd"] for r in booked)
    assert cost == pytest.approx(sync / 2, rel=1e-9)
    assert saved == pytest.approx(sync - cost, rel=1e-9)
    report = ledger.report(by=["route"], tenant_id=tenant)
    assert report[0]["requests"] == 1_000 and report[0]["saved_usd"] == pytest.approx(saved)


_CHILD = """
import os, sys
sys.path.insert(0, {src!r})
from langchain_openai import ChatOpenAI
from graphthrift import Ledger, Store
from graphthrift.langchain.batch import BatchChatModel

store = Store({url!r})
model = BatchChatModel(
    model=ChatOpenAI(model="gpt-4o-mini", base_url={base!r}, api_key="sk-test", max_retries=0),
    store=store, ledger=Ledger(store), poll_interval=0.01, max_poll_interval=0.02, timeout=0.05,
)
config = {{"metadata": {{"graphthrift_batch": True, "tenant_id": {tenant!r}}}}}
try:
    model.batch([f"doc {{n}}" for n in range(40)], config=config)
except Exception as exc:  # the job is still running at the provider
    print(type(exc).__name__, flush=True)
os._exit(0)  # die without cleanup, mid-job
"""


def test_a_restart_mid_job_picks_up_the_submitted_batch_instead_of_paying_twice(
    wire: WireServer, store: Store, ledger: Ledger, tenant: str, tmp_path: Path
) -> None:
    held = wire.batch_script(hold=True, echo=True)
    script = tmp_path / "child.py"
    script.write_text(
        textwrap.dedent(
            _CHILD.format(src=str(SRC), url=store.url, base=wire.openai_url, tenant=tenant)
        )
    )
    child = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(SRC)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "BatchJobTimeout" in child.stdout, child.stderr
    assert len(wire.batch_requests("openai")) == 1
    held.hold = False  # the provider finishes the batch while nobody is watching

    restarted = batched(openai_chat(wire), store, ledger)
    answers = restarted.batch([f"doc {n}" for n in range(40)], config=offline(tenant))

    assert [a.content for a in answers] == [f"echo: doc {n}" for n in range(40)]
    assert len(wire.batch_requests("openai")) == 1  # submitted once, paid once
    assert len([c for c in wire.requests if c.path == "/v1/files"]) == 1
    booked = rows(ledger, tenant)
    assert len(booked) == 40
    assert len({r["call_id"] for r in booked}) == 40


def test_partly_failed_batch_retries_only_the_failed_requests(
    wire: WireServer, store: Store, ledger: Ledger, tenant: str
) -> None:
    wire.batch_script(fail={"r1": 500, "r3": 429, "r2": 400}, echo=True)
    wire.batch_script(echo=True)
    model = batched(openai_chat(wire), store, ledger)
    prompts = [f"p{n}" for n in range(6)]

    answers = model.batch(prompts, config=offline(tenant), return_exceptions=True)

    assert isinstance(answers[2], BatchItemFailed)
    assert answers[2].error_type == "bad_request" and answers[2].custom_id == "r2"
    for n in (0, 1, 3, 4, 5):
        assert isinstance(answers[n], AIMessage) and answers[n].content == f"echo: p{n}"
    assert len(wire.batch_requests("openai")) == 2
    assert uploaded_ids(wire, 1) == ["r1", "r3"]  # only the retryable failures, once each
    booked = {r["call_id"].split(":")[1]: r for r in rows(ledger, tenant)}
    assert len(booked) == 6
    assert booked["r1"]["retry"] and booked["r1"]["attempt"] == 2 and booked["r1"]["success"]
    assert booked["r2"]["success"] is False and booked["r2"]["error_type"] == "bad_request"
    assert booked["r2"]["cost_usd"] == 0.0
    assert not booked["r0"]["retry"] and booked["r0"]["cost_usd"] > 0


def test_a_failed_request_raises_without_return_exceptions(
    wire: WireServer, store: Store, ledger: Ledger, tenant: str
) -> None:
    wire.batch_script(fail={"r0": 400})
    model = batched(openai_chat(wire), store, ledger)
    with pytest.raises(BatchItemFailed, match="r0 failed after 1 attempt"):
        model.batch(["bad"], config=offline(tenant))


def test_an_expired_openai_batch_resubmits_the_unfinished_requests(
    wire: WireServer, store: Store, ledger: Ledger, tenant: str
) -> None:
    wire.batch_script(expire={"r0", "r2"}, echo=True, polls=2)
    wire.batch_script(echo=True)
    model = batched(openai_chat(wire), store, ledger)

    answers = model.batch(["a", "b", "c"], config=offline(tenant))

    assert [a.content for a in answers] == ["echo: a", "echo: b", "echo: c"]
    first = wire.batches[_batch_ids(wire)[0]]
    assert first.ended and first.script.expire == {"r0", "r2"}
    assert len(wire.batch_requests("openai")) == 2
    assert uploaded_ids(wire, 1) == ["r0", "r2"]
    assert len(rows(ledger, tenant)) == 3


def _batch_ids(wire: WireServer) -> list[str]:
    return [b for b in wire.batches if b.startswith("batch_")][-2:]


def test_a_batch_gives_up_after_max_attempts(
    wire: WireServer, store: Store, ledger: Ledger, tenant: str
) -> None:
    for _ in range(2):
        wire.batch_script(fail={"r0": 503})
    model = batched(openai_chat(wire), store, ledger, max_attempts=2)
    [answer] = model.batch(["x"], config=offline(tenant), return_exceptions=True)
    assert isinstance(answer, BatchItemFailed) and answer.attempts == 2
    assert answer.error_type == "upstream"
    assert len(wire.batch_requests("openai")) == 2
    [row] = rows(ledger, tenant)
    assert row["success"] is False and row["error_type"] == "upstream" and row["attempt"] == 2


def test_anthropic_message_batches_priced_at_half_with_errors_and_expiry(
    wire: WireServer, store: Store, ledger: Ledger, tenant: str
) -> None:
    wire.batch_script(fail={"r4": 500, "r5": 400}, expire={"r6"}, echo=True, polls=1)
    wire.batch_script(echo=True)
    model = batched(anthropic_chat(wire), store, ledger)
    prompts = [f"doc {n}" for n in range(10)]

    answers = model.batch(prompts, config=offline(tenant), return_exceptions=True)

    assert isinstance(answers[5], BatchItemFailed) and answers[5].error_type == "bad_request"
    for n in set(range(10)) - {5}:
        assert answers[n].content == f"echo: doc {n}"
    creates = wire.batch_requests("anthropic")
    assert len(creates) == 2
    assert [r["custom_id"] for r in creates[1].body["requests"]] == ["r4", "r6"]
    assert wire.bodies("/v1/messages") == []
    booked = [r for r in rows(ledger, tenant) if r["success"]]
    assert len(booked) == 9
    sync = 9 * sync_price("claude-haiku-4-5", 42, 9)
    assert sum(r["cost_usd"] for r in booked) == pytest.approx(sync / 2, rel=1e-9)
    assert {r["model"] for r in booked} == {"claude-haiku-4-5"}


def test_unmarked_calls_go_to_the_synchronous_endpoint(
    wire: WireServer, store: Store, ledger: Ledger, tenant: str
) -> None:
    model = batched(openai_chat(wire), store, ledger)
    answer = model.invoke("hi", config={"metadata": {"tenant_id": tenant}})
    assert answer.content == "Hello from the wire."
    assert len(wire.bodies("/v1/chat/completions")) == 1
    assert wire.batch_requests("openai") == []


def test_route_batch_marks_a_call_offline(
    wire: WireServer, store: Store, ledger: Ledger, tenant: str
) -> None:
    wire.batch_script(echo=True)
    model = batched(openai_chat(wire), store, ledger)
    answer = model.invoke("hi", config={"metadata": {"tenant_id": tenant, "route": "batch"}})
    assert answer.content == "echo: hi"
    assert answer.response_metadata["graphthrift_batch_request"] == "r0"
    assert wire.bodies("/v1/chat/completions") == []


def test_a_long_job_times_out_and_resumes_by_id(
    wire: WireServer, store: Store, ledger: Ledger, tenant: str
) -> None:
    held = wire.batch_script(hold=True, echo=True)
    model = batched(openai_chat(wire), store, ledger, timeout=0.05)
    with pytest.raises(BatchJobTimeout) as caught:
        model.batch(["slow one", "slow two"], config=offline(tenant))
    job_id = caught.value.job_id
    assert model.result(job_id, wait=False) == [None, None]
    held.hold = False

    other_process = batched(openai_chat(wire), store, ledger)
    answers = other_process.result(job_id)

    assert [a.content for a in answers if isinstance(a, AIMessage)] == [
        "echo: slow one",
        "echo: slow two",
    ]
    assert len(rows(ledger, tenant)) == 2
    assert other_process.result(job_id)  # reading it again books nothing more
    assert len(rows(ledger, tenant)) == 2


def test_submit_returns_a_job_id_at_once(
    wire: WireServer, store: Store, ledger: Ledger, tenant: str
) -> None:
    held = wire.batch_script(hold=True, echo=True)
    model = batched(openai_chat(wire), store, ledger)
    job_id = model.submit(["q1", "q2"], config=offline(tenant))
    assert model.jobs.status(job_id)["status"] == "submitted"
    held.hold = False
    assert [a.content for a in model.result(job_id) if isinstance(a, AIMessage)] == [
        "echo: q1",
        "echo: q2",
    ]


def test_a_job_left_mid_submit_is_found_by_its_metadata_not_resubmitted(
    wire: WireServer, store: Store, ledger: Ledger, tenant: str
) -> None:
    """The process died after OpenAI created the batch but before the id was stored."""
    wire.batch_script(echo=True)
    model = batched(openai_chat(wire), store, ledger)
    request = model._request("lost", offline(tenant), None, {})
    job_id = model.jobs.create([request])
    model.jobs.provider.submit(f"{job_id}:0", [("r0", request.body)])  # the crash window
    with store.connect() as conn:
        conn.execute(
            text(
                "UPDATE graphthrift_batch_jobs SET status = 'submitting',"
                " lease_until = now() - interval '1 minute' WHERE id = :id"
            ),
            {"id": job_id},
        )

    [outcome] = model.jobs.run(job_id)

    assert outcome.ok
    assert len(wire.batch_requests("openai")) == 1
    assert model.jobs.status(job_id)["submissions"] == 0  # adopted, not submitted again


class State(TypedDict):
    docs: list[str]
    answers: Annotated[list[str], operator.add]


def test_concurrent_ainvoke_calls_in_a_langgraph_fan_out_share_one_batch(
    wire: WireServer, store: Store, ledger: Ledger, tenant: str
) -> None:
    wire.batch_script(echo=True)
    model = batched(openai_chat(wire), store, ledger, window_seconds=0.2)

    async def summarize(payload: dict[str, str], config: RunnableConfig) -> dict[str, list[str]]:
        answer = await model.ainvoke(payload["doc"], config=config)
        return {"answers": [f"{payload['doc']} -> {answer.content}"]}

    def fan(state: State) -> list[Send]:
        return [Send("summarize", {"doc": d}) for d in state["docs"]]

    graph = StateGraph(State)
    graph.add_node("summarize", summarize)
    graph.add_conditional_edges(START, fan, ["summarize"])
    graph.add_edge("summarize", END)
    app = graph.compile()
    docs = [f"doc{n}" for n in range(12)]

    out = asyncio.run(app.ainvoke({"docs": docs, "answers": []}, config=offline(tenant)))

    assert sorted(out["answers"]) == sorted(f"{d} -> echo: {d}" for d in docs)
    assert len(wire.batch_requests("openai")) == 1
    booked = rows(ledger, tenant)
    assert len(booked) == 12 and {r["node"] for r in booked} == {"summarize"}


def test_wire_server_batch_objects_parse_in_the_sdks(wire: WireServer) -> None:
    """The server's batch payloads validate as the SDKs' own types."""
    import anthropic
    import openai

    oa = openai.OpenAI(base_url=wire.openai_url, api_key="sk-test", max_retries=0)
    wire.batch_script(status="failed")
    uploaded = oa.files.create(
        file=("x.jsonl", b'{"custom_id": "a", "body": {}}\n'), purpose="batch"
    )
    batch = oa.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    assert batch.status == "in_progress"
    done = oa.batches.retrieve(batch.id)
    assert done.status == "failed" and done.errors is not None
    assert done.request_counts is not None and done.request_counts.failed == 1
    an = anthropic.Anthropic(base_url=wire.anthropic_url, api_key="k", max_retries=0)
    created = an.messages.batches.create(
        requests=[
            {
                "custom_id": "a",
                "params": {
                    "model": "claude-haiku-4-5",
                    "max_tokens": 5,
                    "messages": [{"role": "user", "content": "x"}],
                },
            }
        ]
    )
    assert created.processing_status == "in_progress"
    ended = an.messages.batches.retrieve(created.id)
    assert ended.processing_status == "ended" and ended.request_counts.succeeded == 1
    [entry] = list(an.messages.batches.results(created.id))
    assert entry.result.type == "succeeded"


def test_cli_resumes_lists_and_shows_a_stored_job(
    wire: WireServer,
    store: Store,
    ledger: Ledger,
    tenant: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from graphthrift.cli import main

    held = wire.batch_script(hold=True, echo=True)
    model = batched(openai_chat(wire), store, ledger)
    job_id = model.submit(["from cron"], config=offline(tenant))
    held.hold = False
    monkeypatch.setenv("OPENAI_BASE_URL", wire.openai_url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-cli")

    out = tmp_path / "resume.json"
    assert (
        main(
            [
                "--url",
                store.url,
                "batch",
                "resume",
                job_id,
                "--poll-interval",
                "0.01",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    assert json.loads(out.read_text()) == {"job_id": job_id, "succeeded": 1, "failed": 0}
    assert len(rows(ledger, tenant)) == 1
    assert len(wire.batch_requests("openai")) == 1

    listed = tmp_path / "list.json"
    assert (
        main(["--url", store.url, "batch", "list", "--status", "completed", "--json", str(listed)])
        == 0
    )
    [mine] = [j for j in json.loads(listed.read_text())["jobs"] if j["id"] == job_id]
    assert mine["succeeded"] == 1 and mine["requests"] == 1
    assert main(["--url", store.url, "batch", "status", "gtb_nope"]) == 1


def test_abatch_with_mixed_configs_batches_only_the_offline_inputs(
    wire: WireServer, store: Store, ledger: Ledger, tenant: str
) -> None:
    wire.batch_script(echo=True)
    model = batched(openai_chat(wire), store, ledger)
    configs = [offline(tenant), {"metadata": {"tenant_id": tenant}}, offline(tenant)]

    answers = asyncio.run(model.abatch(["one", "two", "three"], config=configs))

    assert [a.content for a in answers] == ["echo: one", "Hello from the wire.", "echo: three"]
    assert uploaded_ids(wire, 0) == ["r0", "r1"]  # the two offline inputs, in one batch
    assert len(wire.bodies("/v1/chat/completions")) == 1


def test_a_failed_submission_is_retried_by_looking_for_the_batch_first(
    wire: WireServer, store: Store, ledger: Ledger, tenant: str
) -> None:
    """The file upload fails: the job is left for the next attempt, which submits once."""
    wire.batch_script(echo=True)
    model = batched(openai_chat(wire), store, ledger)
    request = model._request("again", offline(tenant), None, {})
    job_id = model.jobs.create([request])
    real_submit = model.jobs.provider.submit

    def failing(tag: str, items: Any) -> str:
        raise ConnectionError("network down")

    model.jobs.provider.submit = failing  # type: ignore[method-assign]
    with pytest.raises(ConnectionError):
        model.jobs.run(job_id)
    model.jobs.provider.submit = real_submit  # type: ignore[method-assign]

    [outcome] = model.jobs.run(job_id, timeout=10)

    assert outcome.ok and outcome.body["choices"][0]["message"]["content"] == "echo: again"
    assert len(wire.batch_requests("openai")) == 1
    assert model.jobs.status(job_id)["submissions"] == 1
