"""Alerts from the ledger on simulated traffic, listeners, and the Prometheus rule file."""

from __future__ import annotations

import json
import math
import random
import re
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from graphthrift import Ledger, Store
from graphthrift.ledger import LedgerRecord
from graphthrift.ops.alerts import (
    Alert,
    AlertConfigError,
    AlertMonitor,
    AlertRules,
    check_alerts,
    prometheus_rules,
    refusal_record,
    write_prometheus_rules,
)

DAY0 = datetime(2026, 10, 1, tzinfo=UTC)
DAYS = 8
FEATURES = {"search": 0.20, "chat": 0.05, "summaries": 0.11, "extract": 0.02, "triage": 0.08}


def _hours() -> list[datetime]:
    return [DAY0 + timedelta(hours=h) for h in range((DAYS + 1) * 24)]


def _cost_traffic(ledger: Ledger, tenant: str, spike: tuple[str, datetime, int, float]) -> None:
    """A week and a day of hourly cost per feature with a daily cycle and noise; one feature's
    cost multiplied from a given hour for a few hours (a prompt regression)."""
    rng = random.Random(11)
    feature, start, hours, factor = spike
    rows = []
    for hour in _hours():
        season = 1 + 0.6 * math.sin(2 * math.pi * (hour.hour - 6) / 24)
        for name, base in FEATURES.items():
            cost = base * season * rng.lognormvariate(0, 0.12)
            if name == feature and start <= hour < start + timedelta(hours=hours):
                cost *= factor
            for part in range(2):
                rows.append(
                    LedgerRecord(
                        ts=hour + timedelta(minutes=10 + 20 * part),
                        tenant_id=tenant,
                        feature=name,
                        model="gpt-4o-mini",
                        cost_usd=cost / 2,
                    )
                )
    ledger.record_many(rows)
    ledger.flush()


def test_a_cost_regression_on_one_feature_is_caught_in_its_first_hour(
    ledger: Ledger, store: Store, tenant: str
) -> None:
    start = DAY0 + timedelta(days=DAYS, hours=10)
    _cost_traffic(ledger, tenant, ("summaries", start, 5, 2.5))
    rules = AlertRules(dimensions=("feature",))

    alerts = check_alerts(
        store,
        rules=rules,
        since=DAY0 + timedelta(days=DAYS),
        until=DAY0 + timedelta(days=DAYS + 1),
        tenant_id=tenant,
    )

    assert [(a.rule, a.dimension) for a in alerts] == [("cost", "feature=summaries")]
    [alert] = alerts
    assert alert.first_hour == start and alert.hours == 5
    assert alert.figure > 2 * alert.baseline
    assert "feature=summaries" in alert.message and "10:00" in alert.message


def test_quiet_traffic_raises_no_alert(ledger: Ledger, store: Store, tenant: str) -> None:
    _cost_traffic(ledger, tenant, ("none", DAY0, 0, 1.0))
    alerts = check_alerts(
        store,
        rules=AlertRules(dimensions=("tenant_id", "feature")),
        since=DAY0 + timedelta(days=DAYS),
        until=DAY0 + timedelta(days=DAYS + 1),
        tenant_id=tenant,
    )
    assert alerts == []


def _ops_traffic(ledger: Ledger, tenant: str, bad_from: datetime) -> None:
    """Hourly router, cache, retry and refusal rows for one feature; all four move at
    ``bad_from``."""
    rng = random.Random(5)
    rows: list[LedgerRecord] = []
    for hour in _hours():
        bad = hour >= bad_from
        tags = {"tenant_id": tenant, "feature": "support"}
        for n in range(150):  # fewer per hour and a rate's own noise hides a real drop
            ts = hour + timedelta(seconds=20 * n)
            escalated = rng.random() < (0.55 if bad else 0.1)
            rows.append(
                LedgerRecord(
                    kind="route", ts=ts, route="escalated" if escalated else "cheap", **tags
                )
            )
            if rng.random() < (0.05 if bad else 0.5):  # new prompt, new cache keys
                rows.append(LedgerRecord(kind="cache_hit", ts=ts, saved_usd=0.001, **tags))
            else:
                retry = rng.random() < (0.45 if bad else 0.05)
                rows.append(
                    LedgerRecord(
                        ts=ts,
                        model="gpt-4o-mini",
                        cost_usd=0.001,
                        retry=retry,
                        attempt=2 if retry else 1,
                        **tags,
                    )
                )
        for _ in range(rng.randint(8, 12) if bad else rng.randint(0, 1)):
            rows.append(refusal_record("max_usd", ts=hour + timedelta(minutes=50), **tags))
    ledger.record_many(rows)
    ledger.flush()


def test_escalation_cache_refusal_and_retry_alerts_name_the_first_hour(
    ledger: Ledger, store: Store, tenant: str
) -> None:
    bad_from = DAY0 + timedelta(days=DAYS, hours=15)
    _ops_traffic(ledger, tenant, bad_from)

    alerts = check_alerts(
        store,
        rules=AlertRules(dimensions=("feature",), escalation_target=0.25),
        since=DAY0 + timedelta(days=DAYS),
        until=DAY0 + timedelta(days=DAYS, hours=20),
        tenant_id=tenant,
        only=("escalation", "cache_hit_rate", "refusals", "retry_cost"),
    )

    by_rule = {a.rule: a for a in alerts}
    assert set(by_rule) == {"escalation", "cache_hit_rate", "refusals", "retry_cost"}
    assert len(alerts) == 4  # one run each, nothing before the change
    for alert in alerts:
        assert alert.first_hour == bad_from and alert.dimension == "feature=support"
        assert alert.hours == 5
    assert by_rule["escalation"].baseline == 0.25 and by_rule["escalation"].figure > 0.25
    assert by_rule["cache_hit_rate"].figure < by_rule["cache_hit_rate"].baseline
    assert by_rule["refusals"].figure >= 8 and by_rule["refusals"].baseline <= 1
    assert by_rule["retry_cost"].figure > 3 * by_rule["retry_cost"].baseline


def test_listeners_and_webhook_get_each_alert_once(
    ledger: Ledger, store: Store, tenant: str, httpserver: Any
) -> None:
    start = DAY0 + timedelta(days=DAYS, hours=3)
    _cost_traffic(ledger, tenant, ("search", start, 2, 4.0))
    httpserver.expect_request("/hook", method="POST").respond_with_data("ok")
    got: list[Alert] = []

    def broken(alert: Alert) -> None:
        raise RuntimeError("pager down")

    monitor = AlertMonitor(
        store,
        rules=AlertRules(dimensions=("feature",)),
        listeners=[broken, got.append],
        webhook=httpserver.url_for("/hook"),
        tenant_id=tenant,
    )
    window = {"since": DAY0 + timedelta(days=DAYS), "until": DAY0 + timedelta(days=DAYS, hours=8)}
    first = monitor.check(**window)
    again = monitor.check(**window)

    assert [a.dimension for a in first] == ["feature=search"] and again == first
    assert got == first  # delivered once, although checked twice; a broken listener is skipped
    [(request, _)] = httpserver.log
    assert json.loads(request.get_data())["first_hour"] == start.isoformat()


def test_alert_settings_are_checked() -> None:
    with pytest.raises(AlertConfigError, match="dimensions"):
        AlertRules(dimensions=("thread_id",))
    with pytest.raises(AlertConfigError, match="escalation_target"):
        AlertRules(escalation_target=1.5)


#: The structure of a Prometheus rule file (prometheus.io/docs/prometheus/latest/
#: configuration/recording_rules/ and alerting_rules/).
RULE_FILE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["groups"],
    "additionalProperties": False,
    "properties": {
        "groups": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["name", "rules"],
                "additionalProperties": False,
                "properties": {
                    "name": {"type": "string", "minLength": 1},
                    "interval": {"type": "string", "pattern": r"^[0-9]+(ms|s|m|h|d|w|y)$"},
                    "limit": {"type": "integer"},
                    "rules": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["expr"],
                            "additionalProperties": False,
                            "properties": {
                                "record": {
                                    "type": "string",
                                    "pattern": r"^[a-zA-Z_:][a-zA-Z0-9_:]*$",
                                },
                                "alert": {"type": "string", "pattern": r"^[a-zA-Z_][a-zA-Z0-9_]*$"},
                                "expr": {"type": "string", "minLength": 1},
                                "for": {"type": "string"},
                                "keep_firing_for": {"type": "string"},
                                "labels": {
                                    "type": "object",
                                    "additionalProperties": {"type": "string"},
                                },
                                "annotations": {
                                    "type": "object",
                                    "additionalProperties": {"type": "string"},
                                },
                            },
                            "oneOf": [{"required": ["record"]}, {"required": ["alert"]}],
                        },
                    },
                },
            },
        }
    },
}


def _exported_metric_names() -> set[str]:
    """Every series name graphthrift.ledger.metrics exports once it has seen each kind of row."""
    from graphthrift.ledger import PrometheusMetrics

    metrics = PrometheusMetrics()
    metrics.observe(
        [
            LedgerRecord(model="gpt-4o-mini", input_tokens=10, output_tokens=2, cost_usd=0.1),
            LedgerRecord(model="gpt-4o-mini", success=False, error_type="timeout", cost_usd=0.0),
            LedgerRecord(kind="cache_hit", saved_usd=0.1),
            LedgerRecord(kind="route", route="escalated", extra={"reason": "difficulty"}),
        ]
    )
    names = set()
    for line in metrics.text().splitlines():
        if line.startswith("# TYPE "):
            name, kind = line.split()[2:4]
            names.add(name)
            if kind == "counter":
                names.add(f"{name}_total")
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def test_prometheus_rules_file_is_valid_and_uses_only_exported_metrics(tmp_path: Path) -> None:
    rules = AlertRules(escalation_target=0.3)
    path = write_prometheus_rules(tmp_path / "graphthrift-rules.yml", rules)
    loaded = yaml.safe_load(path.read_text())

    jsonschema.validate(loaded, RULE_FILE_SCHEMA)
    assert loaded == prometheus_rules(rules)
    recorded = {r["record"] for g in loaded["groups"] for r in g["rules"] if "record" in r}
    alerting = [r for g in loaded["groups"] for r in g["rules"] if "alert" in r]
    assert {r["labels"]["graphthrift_rule"] for r in alerting} == {
        "cost",
        "escalation",
        "cache_hit_rate",
        "refusals",
        "retry_cost",
    }
    exported = _exported_metric_names()
    for group in loaded["groups"]:
        for rule in group["rules"]:
            expr = rule["expr"]
            assert expr.count("(") == expr.count(")"), expr
            for name in re.findall(r"\bgraphthrift[a-zA-Z0-9_:]*", expr):
                assert name in exported or name in recorded, f"{name} is not a graphthrift metric"
    assert any(
        "0.3" in r["expr"] for r in alerting if r["alert"] == "GraphthriftEscalationRateHigh"
    )
    if shutil.which("promtool"):
        check = subprocess.run(
            ["promtool", "check", "rules", str(path)], capture_output=True, text=True
        )
        assert check.returncode == 0, check.stdout + check.stderr


def test_cli_alerts_prints_writes_json_and_rules(
    ledger: Ledger, store: Store, tenant: str, tmp_path: Path
) -> None:
    from graphthrift.cli import main

    start = DAY0 + timedelta(days=DAYS, hours=7)
    _cost_traffic(ledger, tenant, ("extract", start, 3, 5.0))
    out, rules_path = tmp_path / "alerts.json", tmp_path / "rules.yml"
    status = main(
        [
            "--url",
            store.url,
            "alerts",
            "--since",
            (DAY0 + timedelta(days=DAYS)).isoformat(),
            "--until",
            (DAY0 + timedelta(days=DAYS + 1)).isoformat(),
            "--tenant-id",
            tenant,
            "--dimensions",
            "feature",
            "--json",
            str(out),
            "--prometheus-rules",
            str(rules_path),
        ]
    )
    assert status == 0
    [alert] = json.loads(out.read_text())["alerts"]
    assert alert["dimension"] == "feature=extract" and alert["first_hour"] == start.isoformat()
    assert yaml.safe_load(rules_path.read_text())["groups"]
    assert main(["--url", store.url, "alerts", "--dimensions", "thread_id"]) == 1
