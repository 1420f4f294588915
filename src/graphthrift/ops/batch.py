"""Batch API jobs that survive the process: submit once, poll, map back, retry, book.

Long because: one durable job's life (submit, poll, map back, retry, book) is one state
machine over one table, beside the two providers' thin wire adapters it drives.

Offline work (evals, document pipelines, corpus jobs) costs half through the providers'
Batch APIs, but a batch takes minutes to hours: a process may die between submitting and
collecting it. ``BatchJobs`` keeps every job and request in the store, so a restarted
process that runs the same work finds the job already submitted and polls it instead of
paying for it twice.

Lifecycle of a job (``graphthrift_batch_jobs.status``):

``queued`` -> ``submitting`` (leased to one process) -> ``submitted`` (the provider's batch
id is stored) -> ``queued`` again with only the retryable failed requests (next ``round``),
or ``completed`` once every request has a final result.

The provider side goes through the official SDK clients (``openai.OpenAI``,
``anthropic.Anthropic``) that the caller's chat model already holds: ``OpenAIBatches`` and
``AnthropicBatches``. This module imports neither; it only calls the clients it is given.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import text

from graphthrift.errors import BatchItemFailed, BatchJobNotFound, BatchJobTimeout
from graphthrift.ledger.records import LedgerRecord
from graphthrift.ledger.usage import read_usage
from graphthrift.ops.schema import BATCH_ITEMS_TABLE, BATCH_JOBS_TABLE

logger = logging.getLogger("graphthrift.ops.batch")

__all__ = [
    "AnthropicBatches",
    "BatchItemFailed",
    "BatchJobNotFound",
    "BatchJobTimeout",
    "BatchJobs",
    "BatchOutcome",
    "BatchProvider",
    "BatchRequest",
    "ItemResult",
    "OpenAIBatches",
    "list_jobs",
]

FINAL = ("completed", "cancelled")


@dataclass(frozen=True, slots=True)
class BatchRequest:
    """One request of a job: the provider's request body and the run tags to book it under."""

    body: Mapping[str, Any]
    tags: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ItemResult:
    """One request's result as the provider reported it."""

    custom_id: str
    body: dict[str, Any] | None = None
    error: str | None = None
    #: rate_limit, upstream, bad_request, expired, cancelled, missing
    error_type: str | None = None
    retryable: bool = False

    @property
    def ok(self) -> bool:
        return self.body is not None


@dataclass(frozen=True, slots=True)
class BatchOutcome:
    """A request's final outcome, in the order the requests were given."""

    job_id: str
    custom_id: str
    position: int
    body: dict[str, Any] | None
    error: str | None
    error_type: str | None
    attempts: int

    @property
    def ok(self) -> bool:
        return self.body is not None

    def raise_for_error(self) -> dict[str, Any]:
        """The provider's response body, or ``BatchItemFailed``."""
        if self.body is None:
            raise BatchItemFailed(
                self.job_id,
                self.custom_id,
                self.error or "no result",
                self.error_type or "missing",
                self.attempts,
            )
        return self.body


class BatchProvider(Protocol):
    """What ``BatchJobs`` needs from a provider's Batch API."""

    name: str

    def submit(self, tag: str, items: Sequence[tuple[str, Mapping[str, Any]]]) -> str:
        """Create a batch of ``(custom_id, body)``; return the provider's batch id."""
        ...

    def find(self, tag: str) -> str | None:
        """The batch already created under ``tag`` (after a crash mid-submit), if knowable."""
        ...

    def ended(self, batch_id: str) -> bool:
        """Whether the batch has stopped processing (completed, expired, failed, cancelled)."""
        ...

    def results(self, batch_id: str) -> list[ItemResult]:
        """Every result the ended batch reports (requests it does not mention are missing)."""
        ...


# -- providers ----------------------------------------------------------------------------


def _status_error(status: int) -> tuple[str, bool]:
    if status == 429:
        return "rate_limit", True
    if status in (408, 504):
        return "timeout", True
    if status >= 500:
        return "upstream", True
    return "bad_request", False


class OpenAIBatches:
    """OpenAI Batch API through an ``openai.OpenAI`` client: a JSONL file, then a batch.

    The batch carries ``metadata={"graphthrift_job": tag}`` so that a process that died
    between creating it and storing its id finds it again with ``find``.
    """

    name = "openai"

    def __init__(
        self,
        client: Any,
        *,
        endpoint: str = "/v1/chat/completions",
        completion_window: str = "24h",
    ) -> None:
        self.client = client
        self.endpoint = endpoint
        self.completion_window = completion_window

    def submit(self, tag: str, items: Sequence[tuple[str, Mapping[str, Any]]]) -> str:
        lines = "".join(
            json.dumps(
                {"custom_id": cid, "method": "POST", "url": self.endpoint, "body": dict(body)}
            )
            + "\n"
            for cid, body in items
        )
        uploaded = self.client.files.create(
            file=("graphthrift-batch.jsonl", lines.encode()), purpose="batch"
        )
        batch = self.client.batches.create(
            input_file_id=uploaded.id,
            endpoint=self.endpoint,
            completion_window=self.completion_window,
            metadata={"graphthrift_job": tag},
        )
        return str(batch.id)

    def find(self, tag: str) -> str | None:
        page = self.client.batches.list(limit=100)
        for batch in page.data:
            if (batch.metadata or {}).get("graphthrift_job") == tag:
                return str(batch.id)
        return None

    def ended(self, batch_id: str) -> bool:
        status = self.client.batches.retrieve(batch_id).status
        return status in ("completed", "expired", "failed", "cancelled")

    def results(self, batch_id: str) -> list[ItemResult]:
        batch = self.client.batches.retrieve(batch_id)
        out: list[ItemResult] = []
        for file_id in (batch.output_file_id, batch.error_file_id):
            if not file_id:
                continue
            content = self.client.files.content(file_id).text
            for line in content.splitlines():
                if line.strip():
                    out.append(self._item(json.loads(line)))
        if batch.status == "failed" and not out:
            errors = getattr(batch, "errors", None)
            data = getattr(errors, "data", None) or []
            logger.warning(
                "graphthrift: OpenAI batch %s failed validation: %s",
                batch_id,
                "; ".join(str(getattr(e, "message", e)) for e in data) or "no reason given",
            )
        return out

    @staticmethod
    def _item(line: Mapping[str, Any]) -> ItemResult:
        custom_id = str(line.get("custom_id"))
        response = line.get("response") or None
        error = line.get("error") or None
        if response and response.get("status_code") == 200:
            return ItemResult(custom_id, body=dict(response.get("body") or {}))
        if error:
            code = str(error.get("code") or "error")
            kind = "expired" if code == "batch_expired" else "upstream"
            return ItemResult(
                custom_id, error=str(error.get("message") or code), error_type=kind, retryable=True
            )
        status = int((response or {}).get("status_code") or 500)
        body = (response or {}).get("body") or {}
        message = str((body.get("error") or {}).get("message") or f"HTTP {status}")
        kind, retryable = _status_error(status)
        return ItemResult(custom_id, error=message, error_type=kind, retryable=retryable)


class AnthropicBatches:
    """Anthropic Message Batches through an ``anthropic.Anthropic`` client."""

    name = "anthropic"

    def __init__(self, client: Any) -> None:
        self.client = client

    def submit(self, tag: str, items: Sequence[tuple[str, Mapping[str, Any]]]) -> str:
        batch = self.client.messages.batches.create(
            requests=[{"custom_id": cid, "params": dict(body)} for cid, body in items]
        )
        return str(batch.id)

    def find(self, tag: str) -> str | None:
        """Message Batches carry no metadata: a batch created by a process that died before
        storing its id cannot be recognised, so the job is submitted again (logged)."""
        return None

    def ended(self, batch_id: str) -> bool:
        return bool(self.client.messages.batches.retrieve(batch_id).processing_status == "ended")

    def results(self, batch_id: str) -> list[ItemResult]:
        out: list[ItemResult] = []
        for entry in self.client.messages.batches.results(batch_id):
            result = entry.result
            kind = result.type
            if kind == "succeeded":
                out.append(ItemResult(entry.custom_id, body=result.message.model_dump(mode="json")))
            elif kind == "errored":
                inner = getattr(result.error, "error", None)
                err_type = str(getattr(inner, "type", "api_error"))
                message = str(getattr(inner, "message", err_type))
                ours = {
                    "invalid_request_error": ("bad_request", False),
                    "authentication_error": ("bad_request", False),
                    "permission_error": ("bad_request", False),
                    "not_found_error": ("bad_request", False),
                    "request_too_large": ("bad_request", False),
                    "rate_limit_error": ("rate_limit", True),
                }.get(err_type, ("upstream", True))
                out.append(
                    ItemResult(
                        entry.custom_id, error=message, error_type=ours[0], retryable=ours[1]
                    )
                )
            else:  # expired or canceled: never processed, so worth another try
                out.append(
                    ItemResult(
                        entry.custom_id,
                        error=f"request {kind} before it was processed",
                        error_type="expired" if kind == "expired" else "cancelled",
                        retryable=True,
                    )
                )
        return out


# -- jobs ---------------------------------------------------------------------------------


def job_key(provider: str, requests: Sequence[BatchRequest], salt: str = "") -> str:
    """A stable hash of a job's work: the same requests under the same tags, same key.

    ``run_id`` is left out: a restarted process runs the same work under a new run id.
    """
    digest = hashlib.sha256(f"{provider}\x1f{salt}".encode())
    for request in requests:
        tags = {k: v for k, v in request.tags.items() if k != "run_id"}
        digest.update(json.dumps([request.body, tags], sort_keys=True, default=str).encode())
        digest.update(b"\x1e")
    return digest.hexdigest()


class BatchJobs:
    """Batch jobs for one provider, kept in the store and booked in the ledger once.

    Args:
        store: the shared ``Store``.
        provider: ``OpenAIBatches(client)`` or ``AnthropicBatches(client)``.
        ledger: where each request's final outcome is booked (``route="batch"``, priced at
            the batch rate, ``saved_usd`` against the synchronous price). None books nothing.
        poll_interval: seconds before the first status poll; each further poll waits
            ``backoff`` times longer, up to ``max_poll_interval``.
        max_attempts: tries per request; failed requests that may succeed on another try
            (rate limits, server errors, expiry) go into the next round's batch, alone.
        lease_seconds: how long a process may take to submit before another may take over.
        sleep: the sleep function (tests pass a fast one; never a mock of the provider).

    Example:
        >>> jobs = BatchJobs(store, OpenAIBatches(chat_openai.root_client), ledger=ledger)
        >>> job_id = jobs.create([BatchRequest({"model": "gpt-4o-mini", "messages": [...]})])
        >>> outcomes = jobs.run(job_id)
    """

    def __init__(
        self,
        store: Any,
        provider: BatchProvider,
        *,
        ledger: Any | None = None,
        poll_interval: float = 5.0,
        max_poll_interval: float = 300.0,
        backoff: float = 1.5,
        max_attempts: int = 3,
        lease_seconds: float = 600.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if poll_interval <= 0 or max_poll_interval < poll_interval:
            raise ValueError(
                f"need 0 < poll_interval <= max_poll_interval, got {poll_interval} and"
                f" {max_poll_interval}"
            )
        if backoff < 1:
            raise ValueError(f"backoff must be >= 1, got {backoff}")
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
        self.store = store
        self.provider = provider
        self.ledger = ledger
        self.poll_interval = poll_interval
        self.max_poll_interval = max_poll_interval
        self.backoff = backoff
        self.max_attempts = max_attempts
        self.lease_seconds = lease_seconds
        self._sleep = sleep

    # -- creating -------------------------------------------------------------------------

    def create(
        self,
        requests: Sequence[BatchRequest],
        *,
        model: str | None = None,
        tags: Mapping[str, Any] | None = None,
        key: str | None = None,
    ) -> str:
        """The id of the unfinished job doing exactly this work, or of a new one.

        A job with the same key that is still queued or running is reused: that is how a
        restarted process picks up what it submitted before it died. ``key`` overrides the
        hash of the requests (e.g. a pipeline's run name).
        """
        if not requests:
            raise ValueError("a batch job needs at least one request")
        key = key or job_key(self.provider.name, requests)
        with self.store.connect() as conn:
            conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": key})
            found = conn.execute(
                text(
                    f"SELECT id FROM {BATCH_JOBS_TABLE} WHERE key = :k AND provider = :p"
                    " AND status NOT IN ('completed', 'cancelled') ORDER BY created_at LIMIT 1"
                ),
                {"k": key, "p": self.provider.name},
            ).scalar()
            if found is not None:
                logger.info("graphthrift: batch job %s already exists; resuming it", found)
                return str(found)
            job_id = f"gtb_{uuid.uuid4().hex[:20]}"
            conn.execute(
                text(
                    f"INSERT INTO {BATCH_JOBS_TABLE} (id, key, provider, model, tags)"
                    " VALUES (:id, :k, :p, :m, CAST(:t AS jsonb))"
                ),
                {
                    "id": job_id,
                    "k": key,
                    "p": self.provider.name,
                    "m": model,
                    "t": json.dumps(dict(tags or {}), default=str),
                },
            )
            conn.execute(
                text(
                    f"INSERT INTO {BATCH_ITEMS_TABLE} (job_id, custom_id, position, body, tags)"
                    " VALUES (:j, :c, :n, CAST(:b AS jsonb), CAST(:t AS jsonb))"
                ),
                [
                    {
                        "j": job_id,
                        "c": f"r{n}",
                        "n": n,
                        "b": json.dumps(dict(r.body), default=str),
                        "t": json.dumps(dict(r.tags), default=str),
                    }
                    for n, r in enumerate(requests)
                ],
            )
        return job_id

    # -- running --------------------------------------------------------------------------

    def status(self, job_id: str) -> dict[str, Any]:
        """The job's row and its item counts by status."""
        with self.store.connect() as conn:
            job = (
                conn.execute(
                    text(f"SELECT * FROM {BATCH_JOBS_TABLE} WHERE id = :id"), {"id": job_id}
                )
                .mappings()
                .first()
            )
            if job is None:
                raise BatchJobNotFound(job_id)
            counts = dict(
                conn.execute(
                    text(
                        f"SELECT status, count(*) FROM {BATCH_ITEMS_TABLE} WHERE job_id = :id"
                        " GROUP BY status"
                    ),
                    {"id": job_id},
                ).all()
            )
        return {**dict(job), "items": {str(k): int(v) for k, v in counts.items()}}

    def step(self, job_id: str) -> str:
        """Do the one next thing the job needs (submit, poll or collect); return its status."""
        job = self.status(job_id)
        status = str(job["status"])
        if status in FINAL:
            return status
        if status in ("queued", "submitting"):
            self._submit(job_id)
        elif status == "submitted":
            batch_id = str(job["provider_batch_id"])
            if self.provider.ended(batch_id):
                self._collect(job_id, batch_id)
        return str(self.status(job_id)["status"])

    def submit(self, job_id: str) -> str:
        """Submit the job if nobody has; return its status (non-blocking, for long jobs)."""
        status = str(self.status(job_id)["status"])
        if status in ("queued", "submitting"):
            return self.step(job_id)
        return status

    def run(self, job_id: str, *, timeout: float | None = None) -> list[BatchOutcome]:
        """Drive the job to the end, polling with backoff; return every request's outcome.

        Raises:
            BatchJobTimeout: still running after ``timeout`` seconds (it keeps running;
                call ``run`` or ``result`` again with the same id).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        wait = self.poll_interval
        last_round = -1
        while True:
            status = self.step(job_id)
            if status in FINAL:
                break
            round_now = int(self.status(job_id)["round"])
            if round_now != last_round:  # a new batch: start polling it quickly again
                wait, last_round = self.poll_interval, round_now
            if deadline is not None and time.monotonic() + wait > deadline:
                raise BatchJobTimeout(job_id, timeout or 0.0, status)
            self._sleep(wait)
            wait = min(wait * self.backoff, self.max_poll_interval)
        self.book(job_id)
        return self.outcomes(job_id)

    def _submit(self, job_id: str) -> None:
        now = datetime.now(UTC)
        with self.store.connect() as conn:
            job = (
                conn.execute(
                    text(f"SELECT * FROM {BATCH_JOBS_TABLE} WHERE id = :id FOR UPDATE"),
                    {"id": job_id},
                )
                .mappings()
                .first()
            )
            if job is None:
                raise BatchJobNotFound(job_id)
            stale = job["status"] == "submitting"
            if job["status"] not in ("queued", "submitting") or (
                stale and job["lease_until"] is not None and job["lease_until"] > now
            ):
                return  # another process holds it, or it moved on
            conn.execute(
                text(
                    f"UPDATE {BATCH_JOBS_TABLE} SET status = 'submitting', lease_until = :l,"
                    " updated_at = now() WHERE id = :id"
                ),
                {"id": job_id, "l": now + timedelta(seconds=self.lease_seconds)},
            )
            round_no = int(job["round"])
        tag = f"{job_id}:{round_no}"
        batch_id = self.provider.find(tag) if stale else None
        if stale and batch_id is None:
            logger.warning(
                "graphthrift: batch job %s was left mid-submit by a process that died;"
                " submitting round %d again",
                job_id,
                round_no,
            )
        with self.store.connect() as conn:
            pending = conn.execute(
                text(
                    f"SELECT custom_id, body FROM {BATCH_ITEMS_TABLE} WHERE job_id = :id"
                    " AND status = 'pending' ORDER BY position"
                ),
                {"id": job_id},
            ).all()
        submitted_now = batch_id is None
        if batch_id is None:
            try:
                batch_id = self.provider.submit(tag, [(str(c), b) for c, b in pending])
            except BaseException:
                # The batch may exist at the provider even though the call failed (a timeout
                # after it was created): end the lease now, so the next attempt looks for it
                # (``find``) before submitting again.
                with self.store.connect() as conn:
                    conn.execute(
                        text(
                            f"UPDATE {BATCH_JOBS_TABLE} SET lease_until = now(),"
                            " updated_at = now() WHERE id = :id"
                        ),
                        {"id": job_id},
                    )
                raise
        with self.store.connect() as conn:
            conn.execute(
                text(
                    f"UPDATE {BATCH_JOBS_TABLE} SET status = 'submitted', provider_batch_id = :b,"
                    " submissions = submissions + :s, lease_until = NULL, updated_at = now()"
                    " WHERE id = :id"
                ),
                {"id": job_id, "b": batch_id, "s": 1 if submitted_now else 0},
            )
            conn.execute(
                text(
                    f"UPDATE {BATCH_ITEMS_TABLE} SET status = 'submitted', attempts = attempts + 1"
                    " WHERE job_id = :id AND status = 'pending'"
                ),
                {"id": job_id},
            )
        logger.info(
            "graphthrift: batch job %s round %d is %s batch %s (%d requests)",
            job_id,
            round_no,
            "submitted as" if submitted_now else "recovered as",
            batch_id,
            len(pending),
        )

    def _collect(self, job_id: str, batch_id: str) -> None:
        results = {r.custom_id: r for r in self.provider.results(batch_id)}
        with self.store.connect() as conn:
            job = (
                conn.execute(
                    text(f"SELECT * FROM {BATCH_JOBS_TABLE} WHERE id = :id FOR UPDATE"),
                    {"id": job_id},
                )
                .mappings()
                .first()
            )
            if job is None or job["status"] != "submitted" or job["provider_batch_id"] != batch_id:
                return  # another process collected it first
            items = conn.execute(
                text(
                    f"SELECT custom_id, attempts FROM {BATCH_ITEMS_TABLE} WHERE job_id = :id"
                    " AND status = 'submitted'"
                ),
                {"id": job_id},
            ).all()
            updates: list[dict[str, Any]] = []
            retrying = 0
            for custom_id, attempts in items:
                result = results.get(str(custom_id)) or ItemResult(
                    str(custom_id),
                    error="the batch ended without a result for this request",
                    error_type="missing",
                    retryable=True,
                )
                if result.ok:
                    status = "succeeded"
                elif result.retryable and attempts < self.max_attempts:
                    status, retrying = "pending", retrying + 1
                else:
                    status = "failed"
                updates.append(
                    {
                        "j": job_id,
                        "c": custom_id,
                        "s": status,
                        "r": None if result.body is None else json.dumps(result.body),
                        "e": result.error,
                        "t": result.error_type,
                    }
                )
            if updates:
                conn.execute(
                    text(
                        f"UPDATE {BATCH_ITEMS_TABLE} SET status = :s, result = CAST(:r AS jsonb),"
                        " error = :e, error_type = :t WHERE job_id = :j AND custom_id = :c"
                    ),
                    updates,
                )
            conn.execute(
                text(
                    f"UPDATE {BATCH_JOBS_TABLE} SET status = :s, round = round + :n,"
                    " updated_at = now() WHERE id = :id"
                ),
                {
                    "id": job_id,
                    "s": "queued" if retrying else "completed",
                    "n": 1 if retrying else 0,
                },
            )
        if retrying:
            logger.info(
                "graphthrift: batch job %s: %d requests failed and go into the next round",
                job_id,
                retrying,
            )

    # -- results and booking --------------------------------------------------------------

    def outcomes(self, job_id: str) -> list[BatchOutcome]:
        """Every request's current outcome, in the order given (no result yet: no body)."""
        with self.store.connect() as conn:
            rows = conn.execute(
                text(
                    f"SELECT custom_id, position, result, error, error_type, attempts, status"
                    f" FROM {BATCH_ITEMS_TABLE} WHERE job_id = :id ORDER BY position"
                ),
                {"id": job_id},
            ).all()
        if not rows:
            self.status(job_id)  # raises BatchJobNotFound
        return [
            BatchOutcome(
                job_id,
                str(r.custom_id),
                int(r.position),
                r.result if r.status == "succeeded" else None,
                r.error,
                r.error_type,
                int(r.attempts),
            )
            for r in rows
        ]

    def book(self, job_id: str) -> int:
        """Book each finished request in the ledger, exactly once across processes.

        Rows are claimed with ``booked = true`` in one statement, so two processes that
        both collect a job never book it twice. Returns how many rows this call booked.
        """
        if self.ledger is None:
            return 0
        with self.store.connect() as conn:
            job = conn.execute(
                text(f"SELECT model, provider_batch_id FROM {BATCH_JOBS_TABLE} WHERE id = :id"),
                {"id": job_id},
            ).first()
            claimed = conn.execute(
                text(
                    f"UPDATE {BATCH_ITEMS_TABLE} SET booked = true WHERE job_id = :id"
                    " AND booked = false AND status IN ('succeeded', 'failed')"
                    " RETURNING custom_id, body, tags, status, result, error_type, attempts"
                ),
                {"id": job_id},
            ).all()
        if job is None:
            raise BatchJobNotFound(job_id)
        records = [self._record(job_id, job.model, row) for row in claimed]
        self.ledger.record_many(records)
        return len(records)

    def _record(self, job_id: str, job_model: str | None, row: Any) -> LedgerRecord:
        tags = dict(row.tags or {})
        body = row.result or {}
        model = body.get("model") or (row.body or {}).get("model") or job_model
        usage = read_usage(body.get("usage")) if row.status == "succeeded" else None
        common: dict[str, Any] = {
            "kind": "llm",
            "model": model,
            "route": "batch",
            "tenant_id": tags.get("tenant_id"),
            "feature": tags.get("feature"),
            "prompt_version": tags.get("prompt_version"),
            "node": tags.get("node"),
            "thread_id": tags.get("thread_id"),
            "run_id": tags.get("run_id"),
            "call_id": f"{job_id}:{row.custom_id}",
            "attempt": max(1, int(row.attempts)),
            "retry": int(row.attempts) > 1,
            "layer": "batch",
            "extra": {"batch": True, "batch_job": job_id},
        }
        if usage is None:  # a failed request is not billed by the provider
            return LedgerRecord(
                **common,
                success=row.status == "succeeded",
                error_type=_ledger_error_type(row.error_type)
                if row.status != "succeeded"
                else None,
                cost_usd=0.0 if row.status != "succeeded" else None,
                usage_source="none",
            )
        assert self.ledger is not None  # book() returns early without one
        prices = self.ledger.prices
        counts = {
            "cache_write_tokens": usage.cache_write_tokens,
            "cache_write_1h_tokens": usage.cache_write_1h_tokens,
        }
        sync = prices.cost(
            model, usage.input_tokens, usage.output_tokens, usage.cached_tokens, **counts
        )
        batch = prices.cost(
            model,
            usage.input_tokens,
            usage.output_tokens,
            usage.cached_tokens,
            **counts,
            batch=True,
        )
        if usage.cache_write_1h_tokens:
            common["extra"]["cache_write_1h_tokens"] = usage.cache_write_1h_tokens
        return LedgerRecord(
            **common,
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cached_tokens=usage.cached_tokens,
            reasoning_tokens=usage.reasoning_tokens,
            cache_write_tokens=usage.cache_write_tokens,
            saved_usd=None if sync is None or batch is None else sync - batch,
        )


def _ledger_error_type(kind: str | None) -> str:
    """Our batch error kinds in the ledger's error_type vocabulary."""
    return {
        "rate_limit": "rate_limit",
        "timeout": "timeout",
        "bad_request": "bad_request",
        "upstream": "upstream",
    }.get(kind or "", "other")


def list_jobs(store: Any, *, status: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
    """Recent batch jobs, newest first, with their request counts by item status."""
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    with store.connect() as conn:
        rows = conn.execute(
            text(
                f"SELECT j.id, j.provider, j.model, j.status, j.round, j.provider_batch_id,"
                f" j.submissions, j.created_at, j.updated_at,"
                f" count(i.*) AS requests,"
                f" count(*) FILTER (WHERE i.status = 'succeeded') AS succeeded,"
                f" count(*) FILTER (WHERE i.status = 'failed') AS failed"
                f" FROM {BATCH_JOBS_TABLE} j LEFT JOIN {BATCH_ITEMS_TABLE} i ON i.job_id = j.id"
                " WHERE (CAST(:s AS text) IS NULL OR j.status = :s)"
                " GROUP BY j.id ORDER BY j.created_at DESC LIMIT :n"
            ),
            {"s": status, "n": limit},
        ).mappings()
        return [dict(r) for r in rows]
