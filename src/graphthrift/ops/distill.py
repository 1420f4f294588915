"""Distillation export: a high-volume, stable task's teacher outputs as a fine-tune set.

Capture is opt-in (``DistillCapture(enabled=True)``; off by default) because it stores
prompts and answers: a redaction hook runs on every pair *before* anything is written (it
may also drop the pair), and each row expires after ``retention_days`` (``purge`` deletes
what expired; exports never read it).

``export_distill`` writes a deduplicated set of successful calls for one feature (and
route) as OpenAI or Anthropic fine-tuning JSONL, or as a Hugging Face dataset directory
(``hf-datasets``: ``train.jsonl`` / ``test.jsonl`` of ``messages`` records and a
``README.md`` card whose YAML ``configs`` name the splits, so ``datasets.load_dataset(dir)``
reads it with no conversion), with a held-out split chosen by hash (so a
pair stays on its side across exports). It also says whether distilling pays: seed 001
puts the break-even at roughly 1M calls per month per task, against the task's volume
and cost in the ledger.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import text

from graphthrift.errors import GraphthriftError
from graphthrift.ledger.schema import LEDGER_TABLE
from graphthrift.ops.schema import DISTILL_TABLE

__all__ = [
    "BREAK_EVEN_CALLS_PER_MONTH",
    "DISTILL_FORMATS",
    "DistillCapture",
    "Redactor",
    "export_distill",
]

#: Seed 001: distilling a task onto a small model pays only above about this volume.
BREAK_EVEN_CALLS_PER_MONTH = 1_000_000
DISTILL_FORMATS: tuple[str, ...] = ("openai-jsonl", "anthropic-jsonl", "hf-datasets")
_ROLES = ("system", "user", "assistant")

Message = Mapping[str, Any]
#: ``redact(messages, answer)`` -> the pair to keep (redacted), or None to drop it.
Redactor = Callable[[list[dict[str, str]], str], tuple[list[dict[str, str]], str] | None]


class NothingToExport(GraphthriftError, LookupError):
    """No captured successful call matches the export's feature, route and window."""

    def __init__(self, feature: str, route: str | None) -> None:
        self.feature = feature
        self.route = route
        super().__init__(
            f"no captured successful calls for feature {feature!r}"
            + (f", route {route!r}" if route else "")
            + "; is capture enabled (DistillCapture(enabled=True)) for it?"
        )


def _messages(messages: Sequence[Message]) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []
    for n, message in enumerate(messages):
        role = str(message.get("role", ""))
        if role == "human":
            role = "user"
        elif role == "ai":
            role = "assistant"
        if role not in _ROLES:
            raise ValueError(f"message {n} has role {role!r}; expected one of {_ROLES}")
        content = message.get("content", "")
        if isinstance(content, list):  # content blocks: keep the text
            content = " ".join(
                str(b.get("text", "")) for b in content if isinstance(b, Mapping)
            ).strip()
        out.append({"role": role, "content": str(content)})
    return out


class DistillCapture:
    """Opt-in capture of prompts and final answers for a later distillation export.

    Args:
        store: the shared ``Store``.
        enabled: off by default; nothing is written until it is True.
        redact: runs on each ``(messages, answer)`` before it is written; return the pair
            to keep or None to drop it. Redact names, emails and secrets here.
        retention_days: how long a captured pair is kept.
        features, routes: capture only these (None: all).
    """

    def __init__(
        self,
        store: Any,
        *,
        enabled: bool = False,
        redact: Redactor | None = None,
        retention_days: float = 30.0,
        features: Sequence[str] | None = None,
        routes: Sequence[str] | None = None,
    ) -> None:
        if retention_days <= 0:
            raise ValueError(f"retention_days must be > 0, got {retention_days}")
        self.store = store
        self.enabled = enabled
        self.redact = redact
        self.retention = timedelta(days=retention_days)
        self.features = None if features is None else frozenset(features)
        self.routes = None if routes is None else frozenset(routes)

    def capture(
        self,
        messages: Sequence[Message],
        answer: str,
        *,
        success: bool = True,
        model: str | None = None,
        tenant_id: str | None = None,
        feature: str | None = None,
        route: str | None = None,
        prompt_version: str | None = None,
        ts: datetime | None = None,
    ) -> bool:
        """Store one redacted pair; returns whether it was written."""
        if not self.enabled:
            return False
        if self.features is not None and feature not in self.features:
            return False
        if self.routes is not None and route not in self.routes:
            return False
        prompt = _messages(messages)
        if self.redact is not None:
            kept = self.redact(prompt, answer)
            if kept is None:
                return False
            prompt, answer = _messages(kept[0]), str(kept[1])
        digest = hashlib.sha256(json.dumps([prompt, answer], sort_keys=True).encode()).hexdigest()
        when = ts or datetime.now(UTC)
        with self.store.connect() as conn:
            conn.execute(
                text(
                    f"INSERT INTO {DISTILL_TABLE} (ts, expires_at, tenant_id, feature, route,"
                    " prompt_version, model, prompt, answer, success, hash) VALUES (:ts, :exp,"
                    " :tenant, :feature, :route, :pv, :model, CAST(:prompt AS jsonb), :answer,"
                    " :success, :hash)"
                ),
                {
                    "ts": when,
                    "exp": when + self.retention,
                    "tenant": tenant_id,
                    "feature": feature,
                    "route": route,
                    "pv": prompt_version,
                    "model": model,
                    "prompt": json.dumps(prompt),
                    "answer": answer,
                    "success": success,
                    "hash": digest,
                },
            )
        return True

    def purge(self, now: datetime | None = None) -> int:
        """Delete the pairs past their retention; returns how many."""
        with self.store.connect() as conn:
            result = conn.execute(
                text(f"DELETE FROM {DISTILL_TABLE} WHERE expires_at <= :now"),
                {"now": now or datetime.now(UTC)},
            )
        return int(result.rowcount or 0)


def _openai_line(prompt: list[dict[str, str]], answer: str) -> dict[str, Any]:
    return {"messages": [*prompt, {"role": "assistant", "content": answer}]}


def _anthropic_line(prompt: list[dict[str, str]], answer: str) -> dict[str, Any]:
    system = "\n\n".join(m["content"] for m in prompt if m["role"] == "system")
    turns = [m for m in prompt if m["role"] != "system"]
    line: dict[str, Any] = {"messages": [*turns, {"role": "assistant", "content": answer}]}
    if system:
        line = {"system": system, **line}
    return line


def _dataset_card(feature: str, route: str | None, counts: Mapping[str, int]) -> str:
    """A Hugging Face dataset card: YAML ``configs`` naming the splits, then a summary."""
    where = f"feature `{feature}`" + (f", route `{route}`" if route else "")
    return (
        "---\n"
        "configs:\n"
        "- config_name: default\n"
        "  data_files:\n"
        "  - split: train\n"
        "    path: train.jsonl\n"
        "  - split: test\n"
        "    path: test.jsonl\n"
        "task_categories:\n"
        "- text-generation\n"
        "---\n\n"
        f"# Distillation set: {feature}\n\n"
        f"Teacher outputs of the {where}, exported by `graphthrift export distill`:"
        " successful calls only, deduplicated, one chat per line as `messages`"
        " (`role`/`content`, the last one the teacher's answer).\n\n"
        f"- train: {counts['train']} chats\n"
        f"- test (held out by hash): {counts['held_out']} chats\n"
    )


def export_distill(
    store: Any,
    out_dir: str | Path,
    *,
    feature: str,
    route: str | None = None,
    since: datetime | None = None,
    fmt: str = "openai-jsonl",
    held_out: float = 0.1,
    tenant_id: str | None = None,
    break_even_calls: int = BREAK_EVEN_CALLS_PER_MONTH,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Write ``train.jsonl`` and ``held_out.jsonl`` under ``out_dir``; return the figures.

    ``fmt="hf-datasets"`` writes the Hugging Face layout instead: ``train.jsonl``,
    ``test.jsonl`` (the held-out split) and a ``README.md`` dataset card naming them.

    Only successful, unexpired, deduplicated pairs are written. The figures include the
    task's ``monthly_calls`` and ``monthly_cost_usd`` (from the ledger over the window,
    scaled to 30 days), ``break_even_calls_per_month`` and ``pays`` with a plain
    ``verdict``.
    """
    if fmt not in DISTILL_FORMATS:
        raise ValueError(f"format must be one of {', '.join(DISTILL_FORMATS)}, got {fmt!r}")
    if not 0 <= held_out < 1:
        raise ValueError(f"held_out must be a fraction in [0, 1), got {held_out}")
    now = now or datetime.now(UTC)
    since = since or now - timedelta(days=30)
    params: dict[str, Any] = {
        "feature": feature,
        "route": route,
        "since": since,
        "now": now,
        "tenant": tenant_id,
    }
    scope = (
        "feature = :feature AND (CAST(:route AS text) IS NULL OR route = :route)"
        " AND (CAST(:tenant AS text) IS NULL OR tenant_id = :tenant)"
        " AND ts >= :since AND ts < :now"
    )
    with store.connect() as conn:
        rows = conn.execute(
            text(
                f"SELECT DISTINCT ON (hash) hash, prompt, answer FROM {DISTILL_TABLE}"
                f" WHERE {scope} AND success AND expires_at > :now ORDER BY hash, ts"
            ),
            params,
        ).all()
        calls, cost = conn.execute(
            text(
                f"SELECT count(*), coalesce(sum(cost_usd), 0) FROM {LEDGER_TABLE}"
                f" WHERE kind = 'llm' AND {scope}"
            ),
            params,
        ).one()
    if not rows:
        raise NothingToExport(feature, route)
    line = _anthropic_line if fmt == "anthropic-jsonl" else _openai_line
    target = Path(out_dir)
    target.mkdir(parents=True, exist_ok=True)
    cut = int(held_out * 10_000)
    counts = {"train": 0, "held_out": 0}
    test_name = "test.jsonl" if fmt == "hf-datasets" else "held_out.jsonl"
    with (
        (target / "train.jsonl").open("w", encoding="utf-8") as train,
        (target / test_name).open("w", encoding="utf-8") as test,
    ):
        for row in rows:
            side = "held_out" if int(row.hash[:8], 16) % 10_000 < cut else "train"
            (test if side == "held_out" else train).write(
                json.dumps(line(list(row.prompt), row.answer)) + "\n"
            )
            counts[side] += 1
    files = [str(target / "train.jsonl"), str(target / test_name)]
    if fmt == "hf-datasets":
        card = target / "README.md"
        card.write_text(_dataset_card(feature, route, counts), encoding="utf-8")
        files.append(str(card))
    days = max((now - since).total_seconds() / 86_400, 1 / 24)
    monthly_calls = round(int(calls) * 30 / days)
    monthly_cost = float(cost) * 30 / days
    pays = monthly_calls >= break_even_calls
    verdict = (
        f"distillation may pay: {monthly_calls:,} calls/month is above the"
        f" ~{break_even_calls:,} calls/month break-even"
        if pays
        else f"distillation does not pay here: {monthly_calls:,} calls/month is below the"
        f" ~{break_even_calls:,} calls/month break-even (seed 001); keep the large model"
    )
    return {
        "feature": feature,
        "route": route,
        "format": fmt,
        "train": counts["train"],
        "held_out": counts["held_out"],
        "pairs": len(rows),
        "monthly_calls": monthly_calls,
        "monthly_cost_usd": monthly_cost,
        "break_even_calls_per_month": break_even_calls,
        "pays": pays,
        "verdict": verdict,
        "files": files,
    }
