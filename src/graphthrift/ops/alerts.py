"""Alerts on the ledger: cost spikes, escalations, cache hit rate, refusals, retry cost.

Long because: the alert rules, their seasonal check on the ledger and their Prometheus-rule
rendering are one set of thresholds that must agree; splitting them would let the two copies
drift.

"A sudden spike usually signals a prompt regression upstream": a new prompt version that
doubles the tokens of one feature shows first as that feature's hourly cost leaving its
usual range. Each series (a tenant, a feature) is compared with its own *seasonal* baseline:
the same hour of the day (and its two neighbours) on each of the past ``baseline_days``
days, summarised by the median and the MAD (median absolute deviation), which one bad hour
in the baseline cannot drag. An hour is anomalous when it leaves ``median ± k · spread``,
with the spread never below a floor (a flat series has MAD 0 and would alert on noise).

Conditions (``AlertRules``):

- ``cost``: hourly LLM cost per tenant / feature above its seasonal baseline;
- ``escalation``: the router's escalation rate over its target (``kind="route"`` rows);
- ``cache_hit_rate``: cache hits / (hits + LLM calls) below its seasonal baseline;
- ``refusals``: budget refusals per hour (``kind="refusal"`` rows) above their baseline;
- ``retry_cost``: the share of the hour's cost paid for retries above its baseline.

Each ``Alert`` names the rule, the dimension (``feature=search``), the figure, the
baseline and the first hour it moved. ``AlertMonitor`` calls in-process listeners (a
callback or a webhook) once per new alert. ``prometheus_rules`` writes the same conditions
as Prometheus alerting rules over ``graphthrift.ledger.metrics`` names.
"""

from __future__ import annotations

import json
import logging
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import text

from graphthrift import diagnostics
from graphthrift.errors import AlertConfigError
from graphthrift.ledger.records import LedgerRecord
from graphthrift.ledger.schema import ROLLUP_TABLE

logger = logging.getLogger("graphthrift.ops.alerts")

__all__ = [
    "ALERT_RULES",
    "Alert",
    "AlertConfigError",
    "AlertMonitor",
    "AlertRules",
    "check_alerts",
    "prometheus_rules",
    "refusal_record",
    "write_prometheus_rules",
]

ALERT_RULES: tuple[str, ...] = ("cost", "escalation", "cache_hit_rate", "refusals", "retry_cost")
_DIMENSIONS = ("tenant_id", "feature", "route", "prompt_version", "model")
_MAD_TO_SIGMA = 1.4826


@dataclass(frozen=True, slots=True)
class AlertRules:
    """Thresholds of every alert condition.

    Attributes:
        dimensions: the tags whose values are the monitored series.
        baseline_days: past days the seasonal baseline is drawn from.
        season_window: hours either side of the same hour of day also in the baseline.
        min_baseline_points: fewer baseline values than this and the series is not judged.
        k: how many robust standard deviations (1.4826 · MAD) an hour may move.
        cost_floor: the spread of a cost baseline is at least this fraction of its median.
        escalation_target: the router's acceptable escalation rate.
        rate_floor: the spread of a rate baseline (hit rate, retry share) is at least this.
        refusal_floor: the spread of a refusal-count baseline is at least this many.
        min_requests: an hour with fewer requests is not judged on a rate.
    """

    dimensions: tuple[str, ...] = ("tenant_id", "feature")
    baseline_days: int = 7
    season_window: int = 1
    min_baseline_points: int = 5
    k: float = 4.0
    cost_floor: float = 0.2
    escalation_target: float = 0.2
    rate_floor: float = 0.03
    refusal_floor: float = 1.0
    min_requests: int = 20

    def __post_init__(self) -> None:
        for name in self.dimensions:
            if name not in _DIMENSIONS:
                raise AlertConfigError("dimensions", name, f"one of {', '.join(_DIMENSIONS)}")
        if self.baseline_days < 1:
            raise AlertConfigError("baseline_days", self.baseline_days, ">= 1")
        if not 0 <= self.season_window <= 6:
            raise AlertConfigError("season_window", self.season_window, "in [0, 6]")
        if self.k <= 0:
            raise AlertConfigError("k", self.k, "> 0")
        if not 0 < self.escalation_target < 1:
            raise AlertConfigError("escalation_target", self.escalation_target, "in (0, 1)")
        if self.min_requests < 1 or self.min_baseline_points < 1:
            raise AlertConfigError("min_requests", self.min_requests, ">= 1")


@dataclass(frozen=True, slots=True)
class Alert:
    """One condition that held over a run of consecutive hours."""

    rule: str
    dimension: str
    figure: float
    baseline: float
    threshold: float
    first_hour: datetime
    last_hour: datetime
    hours: int
    message: str

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["first_hour"] = self.first_hour.isoformat()
        out["last_hour"] = self.last_hour.isoformat()
        return out


def refusal_record(limit_name: str, **tags: Any) -> LedgerRecord:
    """The ledger row of one budget refusal (``kind="refusal"``) that ``refusals`` counts."""
    return LedgerRecord(
        kind="refusal", success=False, layer="budget", extra={"limit": limit_name}, **tags
    )


# -- reading the ledger --------------------------------------------------------------------


@dataclass
class _Series:
    cost: dict[datetime, float] = field(default_factory=dict)
    calls: dict[datetime, int] = field(default_factory=dict)
    hits: dict[datetime, int] = field(default_factory=dict)
    routed: dict[datetime, int] = field(default_factory=dict)
    escalated: dict[datetime, int] = field(default_factory=dict)
    refusals: dict[datetime, int] = field(default_factory=dict)
    retry_cost: dict[datetime, float] = field(default_factory=dict)


def _hourly(
    store: Any, dimension: str, start: datetime, end: datetime, filters: Mapping[str, Any]
) -> dict[str, _Series]:
    where = ""
    params: dict[str, Any] = {"start": start, "end": end}
    for n, (key, value) in enumerate(filters.items()):
        if key not in _DIMENSIONS:
            raise AlertConfigError("filter", key, f"one of {', '.join(_DIMENSIONS)}")
        where += f" AND {key} = :f{n}"
        params[f"f{n}"] = value
    # alert dimensions and filters are rolled-up tags and the range is whole hours, so the
    # hourly rollups always hold the answer: one row per hour and tag set, not per call
    sql = f"""
        SELECT hour, {dimension} AS value,
            coalesce(sum(cost_usd) FILTER (WHERE kind = 'llm'), 0) AS cost,
            coalesce(sum(rows) FILTER (WHERE kind = 'llm'), 0) AS calls,
            coalesce(sum(rows) FILTER (WHERE kind = 'cache_hit'), 0) AS hits,
            coalesce(sum(rows) FILTER (WHERE kind = 'route'), 0) AS routed,
            coalesce(sum(rows) FILTER (WHERE kind = 'route' AND route = 'escalated'), 0)
                AS escalated,
            coalesce(sum(rows) FILTER (WHERE kind = 'refusal'), 0) AS refusals,
            coalesce(sum(retry_cost_usd) FILTER (WHERE kind = 'llm'), 0) AS retry_cost
        FROM {ROLLUP_TABLE}
        WHERE hour >= :start AND hour < :end AND {dimension} IS NOT NULL {where}
        GROUP BY 1, 2
    """
    out: dict[str, _Series] = {}
    with store.connect() as conn:
        for row in conn.execute(text(sql), params):
            series = out.setdefault(str(row.value), _Series())
            hour = row.hour.astimezone(UTC)
            series.cost[hour] = float(row.cost)
            series.calls[hour] = int(row.calls)
            series.hits[hour] = int(row.hits)
            series.routed[hour] = int(row.routed)
            series.escalated[hour] = int(row.escalated)
            series.refusals[hour] = int(row.refusals)
            series.retry_cost[hour] = float(row.retry_cost)
    return out


# -- judging -------------------------------------------------------------------------------


def _baseline(
    values: Callable[[datetime], float | None], hour: datetime, rules: AlertRules
) -> np.ndarray:
    """The same hour of day (and its neighbours) on past days of the same kind (weekday or
    weekend), or on all past days when those are too few: traffic has a weekly cycle too."""
    weekend = hour.weekday() >= 5
    same: list[float] = []
    every: list[float] = []
    for day in range(1, rules.baseline_days + 1):
        for shift in range(-rules.season_window, rules.season_window + 1):
            when = hour - timedelta(days=day, hours=shift)
            value = values(when)
            if value is None:
                continue
            every.append(value)
            if (when.weekday() >= 5) == weekend:
                same.append(value)
    chosen = same if len(same) >= rules.min_baseline_points else every
    return np.array(chosen, dtype=float)


def _judge(
    rule: str,
    values: Callable[[datetime], float | None],
    hours: Sequence[datetime],
    rules: AlertRules,
    *,
    direction: int,
    floor: Callable[[float], float],
    target: float | None = None,
) -> list[tuple[datetime, float, float, float]]:
    """(hour, figure, baseline, threshold) for each anomalous hour, oldest first."""
    found: list[tuple[datetime, float, float, float]] = []
    for hour in hours:
        figure = values(hour)
        if figure is None:
            continue
        if target is not None:
            if figure > target:
                found.append((hour, figure, target, target))
            continue
        base = _baseline(values, hour, rules)
        if base.size < rules.min_baseline_points:
            continue
        median = float(np.median(base))
        spread = max(float(np.median(np.abs(base - median))) * _MAD_TO_SIGMA, floor(median))
        threshold = median + direction * rules.k * spread
        if (direction > 0 and figure > threshold) or (direction < 0 and figure < threshold):
            found.append((hour, figure, median, threshold))
    return found


def _runs(
    found: list[tuple[datetime, float, float, float]],
) -> Iterable[list[tuple[datetime, float, float, float]]]:
    """Consecutive anomalous hours, grouped."""
    run: list[tuple[datetime, float, float, float]] = []
    for item in found:
        if run and item[0] - run[-1][0] > timedelta(hours=1):
            yield run
            run = []
        run.append(item)
    if run:
        yield run


_WHAT = {
    "cost": ("hourly cost", "USD"),
    "escalation": ("escalation rate", ""),
    "cache_hit_rate": ("cache hit rate", ""),
    "refusals": ("budget refusals per hour", ""),
    "retry_cost": ("share of cost paid for retries", ""),
}


def _fmt(value: float, unit: str) -> str:
    return f"{value:.4f} {unit}" if unit else f"{value:.3g}"


def check_alerts(
    store: Any,
    *,
    rules: AlertRules | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    only: Sequence[str] = ALERT_RULES,
    **filters: Any,
) -> list[Alert]:
    """Every alert condition that held in the closed hours ``[since, until)``.

    ``since`` defaults to 24 hours before ``until`` (default: now). ``filters`` restrict
    the ledger rows read (``tenant_id="acme"``). One alert per run of consecutive anomalous
    hours of one series and rule, naming the first hour it moved.
    """
    rules = rules or AlertRules()
    unknown = [r for r in only if r not in ALERT_RULES]
    if unknown:
        raise AlertConfigError("only", unknown, f"a subset of {', '.join(ALERT_RULES)}")
    end = (until or datetime.now(UTC)).astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    start = (since or end - timedelta(hours=24)).astimezone(UTC)
    start = start.replace(minute=0, second=0, microsecond=0)
    if start >= end:
        return []
    history = start - timedelta(days=rules.baseline_days, hours=rules.season_window + 1)
    hours: list[datetime] = []
    hour = start
    while hour < end:
        hours.append(hour)
        hour += timedelta(hours=1)
    alerts: list[Alert] = []
    for dimension in rules.dimensions:
        for value, s in sorted(_hourly(store, dimension, history, end, filters).items()):
            label = f"{dimension}={value}"
            first_seen = min(s.cost) if s.cost else end

            def cost(h: datetime, s: _Series = s, first: datetime = first_seen) -> float | None:
                return s.cost.get(h, 0.0) if h >= first else None

            def hit_rate(h: datetime, s: _Series = s) -> float | None:
                hits, calls = s.hits.get(h, 0), s.calls.get(h, 0)
                total = hits + calls
                return hits / total if total >= rules.min_requests else None

            def escalation(h: datetime, s: _Series = s) -> float | None:
                routed = s.routed.get(h, 0)
                return s.escalated.get(h, 0) / routed if routed >= rules.min_requests else None

            def refusals(h: datetime, s: _Series = s, first: datetime = first_seen) -> float | None:
                return float(s.refusals.get(h, 0)) if h >= first else None

            def retry_share(h: datetime, s: _Series = s) -> float | None:
                total = s.cost.get(h, 0.0)
                if s.calls.get(h, 0) < rules.min_requests or total <= 0:
                    return None
                return s.retry_cost.get(h, 0.0) / total

            checks: dict[str, list[tuple[datetime, float, float, float]]] = {}
            if "cost" in only:
                checks["cost"] = _judge(
                    "cost", cost, hours, rules, direction=1, floor=lambda m: rules.cost_floor * m
                )
            if "escalation" in only:
                checks["escalation"] = _judge(
                    "escalation",
                    escalation,
                    hours,
                    rules,
                    direction=1,
                    floor=lambda m: 0.0,
                    target=rules.escalation_target,
                )
            if "cache_hit_rate" in only:
                checks["cache_hit_rate"] = _judge(
                    "cache_hit_rate",
                    hit_rate,
                    hours,
                    rules,
                    direction=-1,
                    floor=lambda m: rules.rate_floor,
                )
            if "refusals" in only:
                checks["refusals"] = _judge(
                    "refusals",
                    refusals,
                    hours,
                    rules,
                    direction=1,
                    floor=lambda m: max(rules.refusal_floor, rules.cost_floor * m),
                )
            if "retry_cost" in only:
                checks["retry_cost"] = _judge(
                    "retry_cost",
                    retry_share,
                    hours,
                    rules,
                    direction=1,
                    floor=lambda m: rules.rate_floor,
                )
            for rule, found in checks.items():
                for run in _runs(found):
                    peak = max(run, key=lambda item: abs(item[1] - item[2]))
                    what, unit = _WHAT[rule]
                    alerts.append(
                        Alert(
                            rule=rule,
                            dimension=label,
                            figure=peak[1],
                            baseline=peak[2],
                            threshold=peak[3],
                            first_hour=run[0][0],
                            last_hour=run[-1][0],
                            hours=len(run),
                            message=(
                                f"{label}: {what} {_fmt(peak[1], unit)} against "
                                f"{'a target' if rule == 'escalation' else 'a baseline'} of "
                                f"{_fmt(peak[2], unit)} (threshold {_fmt(peak[3], unit)}), since "
                                f"{run[0][0]:%Y-%m-%d %H:00} UTC"
                            ),
                        )
                    )
    alerts.sort(key=lambda a: (a.first_hour, a.rule, a.dimension))
    return alerts


# -- listeners -----------------------------------------------------------------------------


class AlertMonitor:
    """Check the ledger and tell listeners about each alert once.

    Args:
        store: the shared ``Store``.
        rules: thresholds (``AlertRules``).
        listeners: callables given each new ``Alert`` in process.
        webhook: a URL each new alert is POSTed to as JSON (``Alert.as_dict``).
        filters: ledger filters (``tenant_id="acme"``).

    A listener or webhook that fails is counted (``alert_listener_failure``) and logged;
    the others still run. An alert is new until one with the same rule, dimension and
    first hour was delivered by this monitor.
    """

    def __init__(
        self,
        store: Any,
        *,
        rules: AlertRules | None = None,
        listeners: Sequence[Callable[[Alert], None]] = (),
        webhook: str | None = None,
        webhook_timeout: float = 5.0,
        **filters: Any,
    ) -> None:
        self.store = store
        self.rules = rules or AlertRules()
        self.listeners = list(listeners)
        self.webhook = webhook
        self.webhook_timeout = webhook_timeout
        self.filters = filters
        self._delivered: set[tuple[str, str, datetime]] = set()

    def add_listener(self, listener: Callable[[Alert], None]) -> None:
        self.listeners.append(listener)

    def check(self, *, since: datetime | None = None, until: datetime | None = None) -> list[Alert]:
        """Alerts in the window; new ones go to the listeners. Returns all of them."""
        found = check_alerts(self.store, rules=self.rules, since=since, until=until, **self.filters)
        for alert in found:
            key = (alert.rule, alert.dimension, alert.first_hour)
            if key in self._delivered:
                continue
            self._delivered.add(key)
            self._deliver(alert)
        return found

    def _deliver(self, alert: Alert) -> None:
        targets: list[Callable[[Alert], None]] = list(self.listeners)
        if self.webhook:
            targets.append(self._post)
        for target in targets:
            try:
                target(alert)
            except Exception as exc:
                diagnostics.count(
                    "alert_listener_failure", "graphthrift: an alert listener failed: %r", exc
                )

    def _post(self, alert: Alert) -> None:
        assert self.webhook is not None
        request = urllib.request.Request(
            self.webhook,
            data=json.dumps(alert.as_dict()).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=self.webhook_timeout) as response:
            response.read()


# -- Prometheus alerting rules ------------------------------------------------------------


def prometheus_rules(
    rules: AlertRules | None = None, *, namespace: str = "graphthrift"
) -> dict[str, Any]:
    """The same conditions as Prometheus recording and alerting rules (a rule-file dict).

    PromQL has no seasonal median, so the rules compare each hour with the median of the
    past ``baseline_days`` of hourly values and a spread of IQR / 1.349 (the robust sigma,
    as 1.4826 · MAD is), floored like the ledger checks. Retry cost has no metric of its
    own: the rule watches the share of failed LLM requests, which is what retries follow.
    """
    rules = rules or AlertRules()
    ns = namespace
    by = ", ".join(rules.dimensions)
    window = f"{rules.baseline_days}d"
    k = rules.k

    def robust(series: str, floor: str) -> str:
        median = f"quantile_over_time(0.5, {series}[{window}])"
        iqr = (
            f"(quantile_over_time(0.75, {series}[{window}])"
            f" - quantile_over_time(0.25, {series}[{window}]))"
        )
        return f"{median} + {k:g} * clamp_min({iqr} / 1.349, {floor})"

    def low(series: str, floor: str) -> str:
        median = f"quantile_over_time(0.5, {series}[{window}])"
        iqr = (
            f"(quantile_over_time(0.75, {series}[{window}])"
            f" - quantile_over_time(0.25, {series}[{window}]))"
        )
        return f"{median} - {k:g} * clamp_min({iqr} / 1.349, {floor})"

    cost = f"{ns}:cost_usd:increase1h"
    hit = f"{ns}:cache_hit_ratio:1h"
    esc = f"{ns}:escalation_ratio:1h"
    refused = f"{ns}:budget_violations:increase1h"
    failed = f"{ns}:failed_request_ratio:1h"
    calls = f"sum by ({by}) (increase({ns}_llm_requests_total[1h]))"
    hits = f"sum by ({by}) (increase({ns}_cache_hits_total[1h]))"
    recording = [
        {"record": cost, "expr": f"sum by ({by}) (increase({ns}_cost_usd_total[1h]))"},
        {
            "record": hit,
            "expr": f"{hits} / ({hits} + {calls}) and ({hits} + {calls}) >= {rules.min_requests}",
        },
        {
            "record": esc,
            "expr": (
                f'sum by ({by}) (increase({ns}_route_total{{route="escalated"}}[1h]))'
                f" / sum by ({by}) (increase({ns}_route_total[1h]))"
                f" and sum by ({by}) (increase({ns}_route_total[1h])) >= {rules.min_requests}"
            ),
        },
        {
            "record": refused,
            "expr": f"sum by (limit) (increase({ns}_budget_violations_total[1h]))",
        },
        {
            "record": failed,
            "expr": (
                f'sum by ({by}) (increase({ns}_llm_requests_total{{success="false"}}[1h]))'
                f" / {calls} and {calls} >= {rules.min_requests}"
            ),
        },
    ]

    def alert(name: str, expr: str, summary: str, rule: str) -> dict[str, Any]:
        return {
            "alert": name,
            "expr": expr,
            "labels": {"severity": "warning", "graphthrift_rule": rule},
            "annotations": {"summary": summary},
        }

    labels = " ".join(f"{d}={{{{ $labels.{d} }}}}" for d in rules.dimensions)
    alerting = [
        alert(
            "GraphthriftCostSpike",
            f"{cost} > {robust(cost, f'{rules.cost_floor:g} * quantile_over_time(0.5, {cost}[{window}])')}",
            f"{labels}: hourly cost {{{{ $value }}}} USD is above its {window} baseline",
            "cost",
        ),
        alert(
            "GraphthriftEscalationRateHigh",
            f"{esc} > {rules.escalation_target:g}",
            f"{labels}: escalation rate {{{{ $value }}}} is over the target"
            f" {rules.escalation_target:g}",
            "escalation",
        ),
        alert(
            "GraphthriftCacheHitRateFalling",
            f"{hit} < {low(hit, f'{rules.rate_floor:g}')}",
            f"{labels}: cache hit rate {{{{ $value }}}} fell below its {window} baseline",
            "cache_hit_rate",
        ),
        alert(
            "GraphthriftBudgetRefusalsRising",
            f"{refused} > {robust(refused, f'{rules.refusal_floor:g}')}",
            "limit={{ $labels.limit }}: {{ $value }} budget refusals in the last hour,"
            f" above the {window} baseline",
            "refusals",
        ),
        alert(
            "GraphthriftRetryCostRising",
            f"{failed} > {robust(failed, f'{rules.rate_floor:g}')}",
            f"{labels}: {{{{ $value }}}} of LLM requests failed (and are retried) in the last"
            f" hour, above the {window} baseline",
            "retry_cost",
        ),
    ]
    return {
        "groups": [
            {"name": f"{ns}-recording", "interval": "5m", "rules": recording},
            {"name": f"{ns}-alerts", "interval": "5m", "rules": alerting},
        ]
    }


def write_prometheus_rules(
    path: str | Path, rules: AlertRules | None = None, *, namespace: str = "graphthrift"
) -> Path:
    """Write ``prometheus_rules`` as a YAML rule file (``promtool check rules PATH``)."""
    import yaml

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(
        yaml.safe_dump(prometheus_rules(rules, namespace=namespace), sort_keys=False, width=120),
        encoding="utf-8",
    )
    return target
