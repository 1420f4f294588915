"""Prices come from genai-prices; unknown models cost None with a counted warning."""

from __future__ import annotations

from typing import Any

import pytest
from genai_prices import Usage, calc_price

from graphthrift import diagnostics
from graphthrift.ledger import PriceBook, split_model_ref


@pytest.mark.parametrize(
    "model",
    [
        "gpt-4o-mini",
        "gpt-4o",
        "claude-3-5-sonnet-latest",
        "gemini-2.0-flash",
        "o3-mini",
        "gemini-2.5-pro",
    ],
)
def test_cost_matches_genai_prices_including_cached_input(model: str) -> None:
    book = PriceBook()
    expected = float(
        calc_price(
            Usage(input_tokens=12_000, output_tokens=700, cache_read_tokens=4_000), model
        ).total_price
    )
    assert book.cost(model, 12_000, 700, 4_000) == pytest.approx(expected, rel=1e-9)


def test_cached_tokens_are_cheaper() -> None:
    book = PriceBook()
    assert book.cost("gpt-4o-mini", 10_000, 0, 8_000) < book.cost("gpt-4o-mini", 10_000, 0, 0)  # type: ignore[operator]


def test_provider_prefixes_are_understood() -> None:
    assert split_model_ref("openai:gpt-4o") == ("openai", "gpt-4o")
    assert split_model_ref("anthropic/claude-3-5-haiku-latest") == (
        "anthropic",
        "claude-3-5-haiku-latest",
    )
    assert split_model_ref("my-model:v2") == (None, "my-model:v2")
    book = PriceBook()
    assert book.cost("openai:gpt-4o", 1000, 100) == book.cost("gpt-4o", 1000, 100)


def test_unknown_model_costs_none_and_counts_a_warning() -> None:
    book = PriceBook()
    before = diagnostics.get("unknown_model_price")
    assert book.cost("totally-unknown-model-xyz", 1000, 100) is None
    assert book.cost("totally-unknown-model-xyz", 1000, 100) is None
    assert diagnostics.get("unknown_model_price") == before + 2
    assert not book.is_known("totally-unknown-model-xyz")


def test_override_and_add_prices() -> None:
    book = PriceBook()
    book.set_price(
        "my-finetune", input_per_mtok=1.0, output_per_mtok=4.0, cached_input_per_mtok=0.5
    )
    assert book.cost("my-finetune", 1_000_000, 0) == pytest.approx(1.0)
    assert book.cost("my-finetune", 1_000_000, 1_000_000, 1_000_000) == pytest.approx(4.5)
    original = book.cost("gpt-4o-mini", 1_000_000, 0)
    book.set_price("gpt-4o-mini", input_per_mtok=9.0, output_per_mtok=9.0)
    assert book.cost("gpt-4o-mini", 1_000_000, 0) == pytest.approx(9.0) != original


@pytest.mark.parametrize("bad", [-1.0, "cheap", float("nan") * 0 - 1])
def test_bad_override_is_refused(bad: object) -> None:
    with pytest.raises(ValueError, match="input_per_mtok"):
        PriceBook().set_price("m", input_per_mtok=bad, output_per_mtok=1.0)  # type: ignore[arg-type]


def _calc(model: str, provider: str | None = None, **usage: int) -> float:
    return float(calc_price(Usage(**usage), model, provider_id=provider).total_price)


@pytest.mark.parametrize(
    "model", ["claude-3-5-haiku-latest", "claude-haiku-4-5", "claude-sonnet-4-5", "gpt-4o-mini"]
)
def test_cache_writes_cost_what_genai_prices_says(model: str) -> None:
    """5-minute and 1-hour writes at their own listed rates (flat and size-tiered models)."""
    book = PriceBook()
    got = book.cost(model, 9_000, 300, 2_000, cache_write_tokens=5_000, cache_write_1h_tokens=1_500)
    expected = _calc(
        model,
        input_tokens=9_000,
        output_tokens=300,
        cache_read_tokens=2_000,
        cache_write_tokens=5_000,
        cache_write_1h_tokens=1_500,
    )
    assert got == pytest.approx(expected, abs=1e-6)
    no_writes = book.cost(model, 9_000, 300, 2_000)
    if model.startswith("claude"):  # Anthropic charges a write surcharge; OpenAI does not
        assert got > no_writes  # type: ignore[operator]
    else:
        assert got == pytest.approx(no_writes, abs=1e-12)


def test_1h_writes_without_a_listed_rate_use_the_published_multiplier() -> None:
    """genai-prices lists no 1-hour rate for Claude on Vertex: 2x input, overridable."""
    book = PriceBook()
    assert book.provider("google:claude-3-5-haiku") == "google"
    model, provider = "claude-3-5-haiku", "google"
    base = _calc(
        model,
        provider,
        input_tokens=9_000 - 1_500,
        output_tokens=300,
        cache_read_tokens=2_000,
        cache_write_tokens=5_000 - 1_500,
    )
    input_rate = _calc(model, provider, input_tokens=1_000_000)
    got = book.cost(
        f"{provider}:{model}",
        9_000,
        300,
        2_000,
        cache_write_tokens=5_000,
        cache_write_1h_tokens=1_500,
    )
    assert got == pytest.approx(base + 1_500 * input_rate / 1e6 * 2.0, abs=1e-6)
    # genai-prices alone would price the 1-hour tokens as 5-minute writes: ours costs more
    assert got > _calc(  # type: ignore[operator]
        model,
        provider,
        input_tokens=9_000,
        output_tokens=300,
        cache_read_tokens=2_000,
        cache_write_tokens=5_000,
    )
    book.set_rules(cache_write_1h_multiplier=3.0)
    again = book.cost(
        f"{provider}:{model}",
        9_000,
        300,
        2_000,
        cache_write_tokens=5_000,
        cache_write_1h_tokens=1_500,
    )
    assert again == pytest.approx(base + 1_500 * input_rate / 1e6 * 3.0, abs=1e-6)


def test_reasoning_is_billed_as_output_once() -> None:
    """OpenAI's completion_tokens already include reasoning_tokens: never add them again."""
    from graphthrift.ledger import read_usage

    usage = read_usage(
        {
            "prompt_tokens": 1_000,
            "completion_tokens": 5_000,
            "completion_tokens_details": {"reasoning_tokens": 4_200},
        }
    )
    assert usage is not None
    assert usage.reasoning_tokens == 4_200
    got = PriceBook().cost("o3-mini", usage.input_tokens, usage.output_tokens, usage.cached_tokens)
    assert got == pytest.approx(_calc("o3-mini", input_tokens=1_000, output_tokens=5_000), abs=1e-6)


def test_batch_rate_where_listed_else_the_providers_discount() -> None:
    book = PriceBook()
    usage = {"input_tokens": 10_000, "output_tokens": 500, "cache_read_tokens": 4_000}
    for model in ("claude-haiku-4-5", "claude-sonnet-4-5", "gpt-4o-mini"):  # listed batch rates
        listed = float(
            calc_price(Usage(**usage), model, price_context={"processing": "batch"}).total_price
        )
        assert listed < _calc(model, **usage)
        assert book.cost(model, 10_000, 500, 4_000, batch=True) == pytest.approx(listed, abs=1e-6)
    full = _calc("gemini-2.0-flash", **usage)  # no batch rate listed: Google's 50% discount
    assert book.cost("gemini-2.0-flash", 10_000, 500, 4_000, batch=True) == pytest.approx(
        full * 0.5, abs=1e-6
    )
    book.set_rules(batch_discounts={"google": 0.25})
    assert book.cost("gemini-2.0-flash", 10_000, 500, 4_000, batch=True) == pytest.approx(
        full * 0.75, abs=1e-6
    )
    before = diagnostics.get("unknown_batch_discount")
    assert book.cost("deepseek-chat", 1_000, 10, batch=True) == pytest.approx(
        _calc("deepseek-chat", input_tokens=1_000, output_tokens=10), abs=1e-6
    )
    assert diagnostics.get("unknown_batch_discount") == before + 1


@pytest.mark.parametrize(
    "changes",
    [{"cache_write_1h_multiplier": -1.0}, {"batch_discounts": {"openai": 1.5}}],
)
def test_bad_pricing_rules_are_refused(changes: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=r"must be|fraction"):
        PriceBook().set_rules(**changes)


def test_override_with_cache_write_price() -> None:
    book = PriceBook()
    book.set_price("my-claude", input_per_mtok=2.0, output_per_mtok=8.0, cache_write_per_mtok=2.5)
    # 1M uncached + 1M 5-minute writes + 1M 1-hour writes (2x input by default)
    got = book.cost(
        "my-claude", 3_000_000, 0, cache_write_tokens=2_000_000, cache_write_1h_tokens=1_000_000
    )
    assert got == pytest.approx(2.0 + 2.5 + 4.0)
    # an override named with its provider gets that provider's batch discount
    book.set_price("openai:my-ft", input_per_mtok=1.0, output_per_mtok=1.0)
    assert book.cost("openai:my-ft", 1_000_000, 0, batch=True) == pytest.approx(0.5)


def test_ledger_prices_cache_writes_and_reports_cache_savings(ledger: Any, tenant: str) -> None:
    """cost_usd, cache_write_tokens and cache_savings_usd as the bill and the report see them."""
    from graphthrift.ledger import LedgerRecord

    calls = [  # (input, output, cache_read, cache_write, 1h writes)
        (5_000, 100, 0, 4_800, 0),
        (5_200, 80, 4_800, 0, 0),
        (6_000, 90, 0, 5_000, 5_000),
    ]
    for inp, out, read, write, hour in calls:
        ledger.record(
            LedgerRecord(
                tenant_id=tenant,
                model="claude-haiku-4-5",
                input_tokens=inp,
                output_tokens=out,
                cached_tokens=read,
                cache_write_tokens=write,
                extra={"cache_write_1h_tokens": hour} if hour else None,
            )
        )
    ledger.flush()
    rows = ledger.records(tenant_id=tenant)
    expected_costs = [
        _calc(
            "claude-haiku-4-5",
            input_tokens=inp,
            output_tokens=out,
            cache_read_tokens=read,
            cache_write_tokens=write,
            **({"cache_write_1h_tokens": hour} if hour else {}),
        )
        for inp, out, read, write, hour in calls
    ]
    assert [r["cache_write_tokens"] for r in rows] == [4_800, 0, 5_000]
    for row, cost in zip(rows, expected_costs, strict=True):
        assert row["cost_usd"] == pytest.approx(cost, abs=1e-6)
    listed = [_calc("claude-haiku-4-5", input_tokens=i, output_tokens=o) for i, o, *_ in calls]
    savings = [lst - cost for lst, cost in zip(listed, expected_costs, strict=True)]
    assert savings[0] < 0 < savings[1]  # a write costs extra, a read saves
    for row, saving in zip(rows, savings, strict=True):
        assert row["cache_savings_usd"] == pytest.approx(saving, abs=1e-6)
    [report] = ledger.report(by=["tenant_id"], tenant_id=tenant)
    assert report["cache_write_tokens"] == 9_800
    assert report["cache_savings_usd"] == pytest.approx(sum(savings), abs=1e-6)
    assert report["cost_usd"] == pytest.approx(sum(expected_costs), abs=1e-6)


def test_cache_write_migration_keeps_existing_rows(store: Any, tmp_path: Any) -> None:
    """Migration 3 adds the columns to a ledger written before it, keeping its rows."""
    import uuid

    from sqlalchemy import create_engine, make_url, text

    from graphthrift import Store
    from graphthrift.ledger.schema import LEDGER_MIGRATIONS
    from graphthrift.store import apply_migrations
    from graphthrift.store.migrations import MIGRATIONS

    name = f"gt_prices_{uuid.uuid4().hex[:8]}"
    admin = create_engine(store.url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(store.url).set(database=name).render_as_string(hide_password=False)
    try:
        engine = create_engine(url)
        with engine.begin() as conn:
            before = tuple(m for m in LEDGER_MIGRATIONS if m.version < 3)
            apply_migrations(conn, before)
            conn.execute(
                text(
                    "INSERT INTO graphthrift_ledger (kind, tenant_id, model, input_tokens, cost_usd)"
                    " VALUES ('llm', 'old', 'gpt-4o', 10, 0.5)"
                )
            )
        engine.dispose()
        migrated = Store(url, home=tmp_path)
        with migrated.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT tenant_id, input_tokens, cost_usd, cache_write_tokens,"
                    " cache_savings_usd FROM graphthrift_ledger"
                )
            ).all()
            versions = {
                r[0] for r in conn.execute(text("SELECT version FROM graphthrift_migrations"))
            }
        migrated.close()
        assert rows == [("old", 10, 0.5, 0, None)]
        assert versions == {m.version for m in MIGRATIONS}
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def test_report_command_shows_cache_writes_and_savings(
    ledger: Any, store: Any, tenant: str, tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from graphthrift.cli import main
    from graphthrift.ledger import LedgerRecord

    ledger.record(
        LedgerRecord(
            tenant_id=tenant,
            model="claude-haiku-4-5",
            input_tokens=3_000,
            output_tokens=40,
            cached_tokens=2_000,
            cache_write_tokens=500,
        )
    )
    ledger.flush()
    out = tmp_path / "report.json"
    code = main(["--url", store.url, "report", "--tenant-id", tenant, "--json", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "cache_write_tokens" in printed and "cache_savings_usd" in printed
    [row] = json.loads(out.read_text())["rows"]
    cost = _calc(
        "claude-haiku-4-5",
        input_tokens=3_000,
        output_tokens=40,
        cache_read_tokens=2_000,
        cache_write_tokens=500,
    )
    assert row["cache_write_tokens"] == 500
    assert row["cost_usd"] == pytest.approx(cost, abs=1e-6)
    listed = _calc("claude-haiku-4-5", input_tokens=3_000, output_tokens=40)
    assert row["cache_savings_usd"] == pytest.approx(listed - cost, abs=1e-6)


def test_ledger_prices_a_batch_call_at_the_batch_rate(ledger: Any, tenant: str) -> None:
    """The batch hook: a row marked ``extra["batch"]`` is priced at genai-prices' batch rate."""
    from graphthrift.ledger import LedgerRecord

    for batch in (False, True):
        ledger.record(
            LedgerRecord(
                tenant_id=tenant,
                model="claude-haiku-4-5",
                input_tokens=20_000,
                output_tokens=1_000,
                cached_tokens=5_000,
                cache_write_tokens=10_000,
                extra={"batch": True} if batch else None,
            )
        )
    ledger.flush()
    standard, batched = ledger.records(tenant_id=tenant)
    usage = Usage(
        input_tokens=20_000, output_tokens=1_000, cache_read_tokens=5_000, cache_write_tokens=10_000
    )
    assert standard["cost_usd"] == pytest.approx(
        float(calc_price(usage, "claude-haiku-4-5").total_price), abs=1e-6
    )
    assert batched["cost_usd"] == pytest.approx(
        float(
            calc_price(usage, "claude-haiku-4-5", price_context={"processing": "batch"}).total_price
        ),
        abs=1e-6,
    )
    assert batched["cost_usd"] < standard["cost_usd"]
