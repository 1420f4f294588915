"""``graphthrift bench --traffic``: logged OpenAI requests replayed through the layers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from graphthrift import Store
from graphthrift.bench._traffic_read import parse_line, read_traffic
from graphthrift.cli import main

REPO = Path(__file__).resolve().parents[1]
SYSTEM = "You are the support assistant of a bank. Answer briefly."


def _request(
    question: str,
    *,
    model: str = "gpt-4o",
    answer: str = "Open the app and go to Cards.",
    history: list[dict[str, str]] | None = None,
    meta: dict[str, str] | None = None,
    cached: int | None = None,
) -> dict[str, Any]:
    messages = [{"role": "system", "content": SYSTEM}, *(history or [])]
    messages.append({"role": "user", "content": question})
    usage: dict[str, Any] = {"prompt_tokens": 40 + 10 * len(messages), "completion_tokens": 12}
    if cached is not None:
        usage["prompt_tokens_details"] = {"cached_tokens": cached}
    return {
        "model": model,
        "messages": messages,
        "metadata": meta or {"tenant_id": "acme", "feature": "faq"},
        "response": {"choices": [{"message": {"content": answer}}], "usage": usage},
    }


def _write(path: Path, lines: list[Any]) -> Path:
    path.write_text(
        "\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n",
        encoding="utf-8",
    )
    return path


def _replay(
    store: Store, path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], *extra: str
) -> tuple[int, dict[str, Any], str]:
    out = tmp_path / "traffic.json"
    argv = ["--url", store.url, "bench", "--traffic", str(path), "--json", str(out), *extra]
    code = main(argv)
    printed = capsys.readouterr()
    return code, json.loads(out.read_text()), " ".join((printed.out + printed.err).split())


def test_wrapped_and_plain_lines_read_the_same() -> None:
    plain = _request("Where is my card?", cached=0)
    wrapped = {
        "request": {k: v for k, v in plain.items() if k != "response"},
        "response": plain["response"],
    }
    a, b = parse_line(1, json.dumps(plain)), parse_line(1, json.dumps(wrapped))
    assert a == b
    assert (
        a.usage is not None and a.usage.input_tokens == plain["response"]["usage"]["prompt_tokens"]
    )
    assert a.usage.cached_tokens == 0 and a.answer == "Open the app and go to Cards."
    assert a.tenant_id == "acme" and a.feature == "faq" and a.thread_id is None
    no_details = parse_line(2, json.dumps(_request("Where is my card?")))
    assert no_details.usage is not None and no_details.usage.cached_tokens is None


def test_content_parts_and_developer_role_are_read() -> None:
    line = {
        "model": "gpt-4o",
        "messages": [
            {"role": "developer", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "image_url"}]},
        ],
    }
    req = parse_line(1, json.dumps(line))
    assert [m["role"] for m in req.messages] == ["system", "user"]
    assert req.messages[1]["content"] == "Hi" and req.usage is None and req.tenant_id == "default"


def test_bad_json_lines_are_counted_and_the_rest_replayed(
    store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = [_request("How do I activate my card?"), _request("How do I activate my card?")]
    bad = [
        "{not json",
        json.dumps([1, 2]),
        json.dumps({"model": "gpt-4o"}),
        json.dumps({"model": "gpt-4o", "messages": [{"role": "wizard", "content": "x"}]}),
        json.dumps({"messages": [{"role": "user", "content": "no model"}]}),
    ]
    path = _write(tmp_path / "t.jsonl", [good[0], *bad, good[1]])
    read = read_traffic(path)
    assert [b.line for b in read.bad] == [2, 3, 4, 5, 6]
    assert "not JSON" in read.bad[0].problem and "no messages" in read.bad[2].problem
    code, figures, printed = _replay(store, path, tmp_path, capsys)
    assert code == 0
    assert figures["traffic"]["requests"] == 2 and figures["traffic"]["bad_lines"] == 5
    assert "line 2 skipped: not JSON" in printed
    rows = {r["layer"]: r for r in figures["stack"]}
    assert rows["baseline"]["cost_usd"] > 0 and rows["baseline"]["requests_sent"] == 2
    assert rows["exact_cache"]["served_from_cache"] == 1  # the verbatim repeat
    assert rows["exact_cache"]["cost_usd"] < rows["baseline"]["cost_usd"]
    assert figures["layers"]["exact_cache"]["answer_agreement"] == 1.0


def test_unknown_models_are_reported_and_not_priced(
    store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = [
        _request("Where is my refund?", model="acme-inhouse-llm-7"),
        _request("Can I change my PIN?", model="gpt-4o-mini"),
    ]
    code, figures, printed = _replay(store, _write(tmp_path / "t.jsonl", lines), tmp_path, capsys)
    assert code == 0
    assert figures["traffic"]["unknown_models"] == {"acme-inhouse-llm-7": 1}
    assert "no price known for: acme-inhouse-llm-7 (1)" in printed
    baseline = figures["stack"][0]
    assert baseline["unpriced"] == 1 and baseline["cost_usd"] > 0
    # routing targets the cheap model only where it is cheaper: never the unknown one
    assert figures["layers"]["routing"]["eligible_requests"] == 0
    assert "dearer than --cheap-model" in figures["layers"]["routing"]["why"]


def test_empty_file_replays_nothing_and_says_so(
    store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, figures, printed = _replay(store, _write(tmp_path / "t.jsonl", []), tmp_path, capsys)
    assert code == 0
    assert figures["stack"] == [] and figures["traffic"] == {
        "file": str(tmp_path / "t.jsonl"),
        "requests": 0,
        "bad_lines": 0,
    }
    assert "no valid request" in printed


def test_missing_traffic_file_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["bench", "--traffic", str(tmp_path / "nope.jsonl")]) == 1
    assert "no such file" in " ".join(capsys.readouterr().out.split())


def test_threads_group_by_id_else_by_shared_prefix(
    store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    turns: list[dict[str, str]] = []
    lines = []
    for k in range(6):  # one conversation without a thread id, growing turn by turn
        lines.append(_request(f"Step {k}: what about order A-{1000 + k}?", history=list(turns)))
        turns += [
            {"role": "user", "content": f"Step {k}: what about order A-{1000 + k}?"},
            {"role": "assistant", "content": f"Order A-{1000 + k} shipped on May {k + 1}."},
        ]
    meta = {"tenant_id": "globex", "feature": "chat", "thread_id": "t-1"}
    lines += [_request("Hello", meta=meta), _request("Again", meta=meta, history=turns[:2])]
    code, figures, _ = _replay(
        store, _write(tmp_path / "t.jsonl", lines), tmp_path, capsys, "--history-max-tokens", "120"
    )
    assert code == 0
    traffic = figures["traffic"]
    assert traffic["grouped_by"] == {"prefix": 6, "thread_id": 2}
    assert traffic["conversations"] == 2 and traffic["tenants"] == 2
    history = figures["layers"]["history"]
    assert history["estimated"] and history["requests_pruned"] > 0
    assert history["prefix_stability"] is not None and 0 <= history["prefix_stability"] <= 1


def test_example_file_replays_every_layer_with_a_waterfall(
    store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    example = REPO / "examples" / "traffic.jsonl"
    code, figures, printed = _replay(store, example, tmp_path, capsys, "--run-usd", "0.002")
    assert code == 0
    assert figures["traffic"]["bad_lines"] == 0 and figures["traffic"]["tenants"] >= 3
    assert figures["traffic"]["requests"] == sum(1 for x in example.open() if x.strip())
    layers = [r["layer"] for r in figures["stack"]]
    assert layers == [
        "baseline",
        "exact_cache",
        "semantic_cache",
        "history",
        "compression",
        "routing",
        "budgets",
    ]
    assert all(info["estimated"] for info in figures["layers"].values())
    costs = [r["cost_usd"] for r in figures["stack"]]
    assert costs[-1] < costs[0]
    assert Path(figures["png"]).stat().st_size > 0
    assert "routing: quality not estimated" in printed
