"""Distillation capture (opt-in, redacted, retained) and the fine-tune export."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import text

from graphthrift import Ledger, Store
from graphthrift.ledger import LedgerRecord
from graphthrift.ops.distill import DistillCapture, NothingToExport, export_distill

EMAIL = re.compile(r"[\w.]+@[\w.]+")


def redact(messages: list[dict[str, str]], answer: str) -> tuple[list[dict[str, str]], str] | None:
    if any("DROP ME" in m["content"] for m in messages):
        return None
    return [{**m, "content": EMAIL.sub("<email>", m["content"])} for m in messages], answer


def stored(store: Store, tenant: str) -> list[dict[str, object]]:
    with store.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT prompt, answer, expires_at, ts FROM graphthrift_distill_captures WHERE tenant_id = :t"
            ),
            {"t": tenant},
        ).mappings()
        return [dict(r) for r in rows]


def prompt(n: int) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": "You classify support tickets."},
        {"role": "user", "content": f"Ticket {n}: my invoice is wrong, write to bob@example.com"},
    ]


def test_capture_is_off_by_default_and_redacts_before_writing(store: Store, tenant: str) -> None:
    off = DistillCapture(store)
    assert off.capture(prompt(1), "billing", tenant_id=tenant, feature="triage") is False
    assert stored(store, tenant) == []

    on = DistillCapture(store, enabled=True, redact=redact, features=["triage"])
    assert on.capture(prompt(1), "billing", tenant_id=tenant, feature="triage")
    assert not on.capture(prompt(2), "billing", tenant_id=tenant, feature="other")
    assert not on.capture(
        [{"role": "user", "content": "DROP ME"}], "x", tenant_id=tenant, feature="triage"
    )
    [row] = stored(store, tenant)
    assert "bob@example.com" not in json.dumps(row["prompt"]) and "<email>" in json.dumps(
        row["prompt"]
    )
    with pytest.raises(ValueError, match="role 'tool'"):
        on.capture([{"role": "tool", "content": "x"}], "y", tenant_id=tenant, feature="triage")


def test_retention_purges_expired_pairs(store: Store, tenant: str) -> None:
    capture = DistillCapture(store, enabled=True, retention_days=7)
    old = datetime.now(UTC) - timedelta(days=8)
    capture.capture(prompt(1), "a", tenant_id=tenant, feature="triage", ts=old)
    capture.capture(prompt(2), "b", tenant_id=tenant, feature="triage")
    assert capture.purge() >= 1
    assert [r["answer"] for r in stored(store, tenant)] == ["b"]


def test_export_dedupes_keeps_successes_splits_and_says_when_it_does_not_pay(
    store: Store, ledger: Ledger, tenant: str, tmp_path: Path
) -> None:
    capture = DistillCapture(store, enabled=True)
    for n in range(200):
        capture.capture(
            prompt(n), f"label {n % 3}", tenant_id=tenant, feature="triage", route="strong"
        )
    for n in range(20):  # the same pairs again: exported once
        capture.capture(
            prompt(n), f"label {n % 3}", tenant_id=tenant, feature="triage", route="strong"
        )
    capture.capture(
        prompt(999), "wrong", success=False, tenant_id=tenant, feature="triage", route="strong"
    )
    capture.capture(prompt(5000), "CHEAP-ANSWER", tenant_id=tenant, feature="triage", route="cheap")
    now = datetime.now(UTC) + timedelta(seconds=1)
    calls = [
        LedgerRecord(
            ts=now - timedelta(hours=n, minutes=1),
            tenant_id=tenant,
            feature="triage",
            route="strong",
            model="gpt-4o",
            cost_usd=0.01,
        )
        for n in range(70)
    ]
    ledger.record_many(calls)
    ledger.flush()

    figures = export_distill(
        store,
        tmp_path / "openai",
        feature="triage",
        route="strong",
        tenant_id=tenant,
        since=now - timedelta(days=7),
        now=now,
        held_out=0.2,
    )

    assert figures["pairs"] == 200 and figures["train"] + figures["held_out"] == 200
    assert 20 <= figures["held_out"] <= 60  # about a fifth, chosen by hash
    train = [json.loads(x) for x in (tmp_path / "openai" / "train.jsonl").read_text().splitlines()]
    test = [
        json.loads(x) for x in (tmp_path / "openai" / "held_out.jsonl").read_text().splitlines()
    ]
    as_text = {json.dumps(x) for x in train} | {json.dumps(x) for x in test}
    assert len(as_text) == 200 and not (
        {json.dumps(x) for x in train} & {json.dumps(x) for x in test}
    )
    assert all([m["role"] for m in x["messages"]] == ["system", "user", "assistant"] for x in train)
    assert "FAILED-ANSWER" not in json.dumps(train + test)
    assert "CHEAP-ANSWER" not in json.dumps(train + test)
    assert figures["monthly_calls"] == round(70 * 30 / 7)
    assert figures["monthly_cost_usd"] == pytest.approx(0.7 * 30 / 7)
    assert figures["pays"] is False and "does not pay" in figures["verdict"]

    again = export_distill(
        store,
        tmp_path / "anthropic",
        feature="triage",
        route="strong",
        tenant_id=tenant,
        since=now - timedelta(days=7),
        now=now,
        held_out=0.2,
        fmt="anthropic-jsonl",
        break_even_calls=100,
    )
    assert again["held_out"] == figures["held_out"]  # the same pairs on the same side
    first = json.loads((tmp_path / "anthropic" / "train.jsonl").read_text().splitlines()[0])
    assert first["system"] == "You classify support tickets."
    assert [m["role"] for m in first["messages"]] == ["user", "assistant"]
    assert again["pays"] is True and "may pay" in again["verdict"]
    with pytest.raises(NothingToExport, match="capture enabled"):
        export_distill(store, tmp_path / "none", feature="nothing-here", tenant_id=tenant)


def test_cli_export_distill(store: Store, tenant: str, tmp_path: Path) -> None:
    from graphthrift.cli import main

    capture = DistillCapture(store, enabled=True)
    for n in range(30):
        capture.capture(prompt(n), "ok", tenant_id=tenant, feature="cli-triage")
    out = tmp_path / "figures.json"
    status = main(
        [
            "--url",
            store.url,
            "export",
            "distill",
            "--feature",
            "cli-triage",
            "--tenant-id",
            tenant,
            "--since",
            "1d",
            "--out",
            str(tmp_path / "set"),
            "--json",
            str(out),
        ]
    )
    assert status == 0
    figures = json.loads(out.read_text())
    assert figures["pairs"] == 30 and figures["pays"] is False
    assert (tmp_path / "set" / "train.jsonl").read_text().count("\n") == figures["train"]


def test_distill_callback_captures_a_graphs_answers_with_its_tags(
    store: Store, tenant: str, tmp_path: Path
) -> None:
    import itertools

    from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
    from langchain_core.messages import AIMessage
    from langgraph.graph import START, MessagesState, StateGraph

    from graphthrift.langchain import DistillCallback

    model = GenericFakeChatModel(messages=itertools.repeat(AIMessage("team: billing")))
    graph = StateGraph(MessagesState)
    graph.add_node("agent", lambda state: {"messages": [model.invoke(state["messages"])]})
    graph.add_edge(START, "agent")
    app = graph.compile()
    capture = DistillCapture(store, enabled=True, redact=redact)
    config = {
        "callbacks": [DistillCallback(capture)],
        "metadata": {"tenant_id": tenant, "feature": "routing", "route": "strong"},
    }
    for n in range(3):
        app.invoke({"messages": [("user", f"ticket {n} from eve@example.com")]}, config=config)
    off = {"callbacks": [DistillCallback(DistillCapture(store))], "metadata": {"tenant_id": tenant}}
    app.invoke({"messages": [("user", "not captured")]}, config=off)

    rows = stored(store, tenant)
    assert len(rows) == 3
    assert all(r["answer"] == "team: billing" for r in rows)
    assert "eve@example.com" not in json.dumps([r["prompt"] for r in rows])
    figures = export_distill(store, tmp_path, feature="routing", route="strong", tenant_id=tenant)
    assert figures["pairs"] == 3


def test_cli_export_distill_hf_datasets_layout_round_trips(
    store: Store, tenant: str, tmp_path: Path
) -> None:
    import yaml

    from graphthrift.cli import main

    capture = DistillCapture(store, enabled=True)
    pairs = {n: f"label {n % 4} for {n}" for n in range(120)}
    for n, answer in pairs.items():
        capture.capture(prompt(n), answer, tenant_id=tenant, feature="hf-triage", route="strong")
    out = tmp_path / "figures.json"
    target = tmp_path / "hf"
    where = ["--feature", "hf-triage", "--route", "strong", "--tenant-id", tenant]
    how = ["--since", "1d", "--format", "hf-datasets", "--held-out", "0.25"]
    into = ["--out", str(target), "--json", str(out)]
    status = main(["--url", store.url, "export", "distill", *where, *how, *into])
    assert status == 0
    figures = json.loads(out.read_text())
    assert sorted(p.name for p in target.iterdir()) == ["README.md", "test.jsonl", "train.jsonl"]
    card = (target / "README.md").read_text()
    front = card.split("---\n")[1]  # the YAML front matter datasets.load_dataset(dir) reads
    config = yaml.safe_load(front)["configs"][0]
    assert config["config_name"] == "default"
    assert config["data_files"] == [
        {"split": "train", "path": "train.jsonl"},
        {"split": "test", "path": "test.jsonl"},
    ]
    splits = {
        name: [json.loads(x) for x in (target / f"{name}.jsonl").read_text().splitlines()]
        for name in ("train", "test")
    }
    assert len(splits["train"]) == figures["train"] and len(splits["test"]) == figures["held_out"]
    assert 10 <= figures["held_out"] <= 50 and figures["pairs"] == 120
    expected = {
        json.dumps({"messages": [*prompt(n), {"role": "assistant", "content": a}]}, sort_keys=True)
        for n, a in pairs.items()
    }
    written = [json.dumps(r, sort_keys=True) for r in splits["train"] + splits["test"]]
    assert len(written) == len(set(written)) and set(written) == expected
    assert all(set(r) == {"messages"} for r in splits["train"] + splits["test"])
