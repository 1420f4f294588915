"""Tables of the resilience layer (migration versions 30-39).

- ``graphthrift_flights``: the answer of a single-flight or a request-id run, handed over to
  the callers that waited for it (in other processes too) and kept for a short window.
- ``graphthrift_tool_claims``: one claim per idempotency key of a side-effecting tool, so the
  tool runs at most once per key, and its stored result is returned on repeat.
- ``graphthrift_retry_window``: calls and retries per scope per time bucket, the sliding window
  that retry budgets read.
- ``graphthrift_rate_buckets``: one token bucket per limit (requests or tokens per minute of a
  provider, model and tenant), shared by every process.
- ``graphthrift_rate_waiters``: interactive callers waiting for room in a bucket, so batch
  callers in every process hold back until they are served (each row expires on its own).
- ``graphthrift_circuits``: the circuit-breaker state of each model (recent outcomes, open or
  half-open, probes taken), shared by every process on the store.
- ``graphthrift_inflight``: one row per unit of work in flight (its key, thread, run, tenant,
  payload, owner process), so a restarted process knows what a drain or a ``kill -9``
  interrupted, and exactly one process resumes each unit.
"""

from __future__ import annotations

from graphthrift.store.migration import Migration

FLIGHTS_TABLE = "graphthrift_flights"
TOOL_CLAIMS_TABLE = "graphthrift_tool_claims"
RETRY_WINDOW_TABLE = "graphthrift_retry_window"
RATE_BUCKETS_TABLE = "graphthrift_rate_buckets"
RATE_WAITERS_TABLE = "graphthrift_rate_waiters"
CIRCUITS_TABLE = "graphthrift_circuits"
INFLIGHT_TABLE = "graphthrift_inflight"

RESILIENCE_MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        30,
        "single-flight and request-id answers",
        (
            f"""
            CREATE TABLE IF NOT EXISTS {FLIGHTS_TABLE} (
                key_hash text PRIMARY KEY,
                kind text NOT NULL,
                fingerprint text,
                tenant_id text,
                model text,
                result jsonb,
                usage jsonb,
                started_at timestamptz NOT NULL DEFAULT now(),
                finished_at timestamptz NOT NULL DEFAULT now(),
                expires_at timestamptz NOT NULL
            )
            """,
            f"CREATE INDEX IF NOT EXISTS {FLIGHTS_TABLE}_expires ON {FLIGHTS_TABLE} (expires_at)",
        ),
    ),
    Migration(
        31,
        "idempotent tool claims",
        (
            f"""
            CREATE TABLE IF NOT EXISTS {TOOL_CLAIMS_TABLE} (
                key_hash text PRIMARY KEY,
                tenant_id text,
                tool text NOT NULL,
                status text NOT NULL,
                owner text NOT NULL,
                lease_until timestamptz NOT NULL,
                result jsonb,
                created_at timestamptz NOT NULL DEFAULT now(),
                expires_at timestamptz NOT NULL
            )
            """,
            f"CREATE INDEX IF NOT EXISTS {TOOL_CLAIMS_TABLE}_expires"
            f" ON {TOOL_CLAIMS_TABLE} (expires_at)",
        ),
    ),
    Migration(
        32,
        "retry budget window",
        (
            f"""
            CREATE TABLE IF NOT EXISTS {RETRY_WINDOW_TABLE} (
                scope text NOT NULL,
                bucket bigint NOT NULL,
                calls bigint NOT NULL DEFAULT 0,
                retries bigint NOT NULL DEFAULT 0,
                PRIMARY KEY (scope, bucket)
            )
            """,
        ),
    ),
    Migration(
        33,
        "shared rate limit buckets",
        (
            f"""
            CREATE TABLE IF NOT EXISTS {RATE_BUCKETS_TABLE} (
                key text PRIMARY KEY,
                level double precision NOT NULL,
                capacity double precision NOT NULL,
                refill_per_s double precision NOT NULL,
                updated_at timestamptz NOT NULL DEFAULT clock_timestamp()
            )
            """,
        ),
    ),
    Migration(
        34,
        "interactive callers queued on a rate bucket",
        (
            f"""
            CREATE TABLE IF NOT EXISTS {RATE_WAITERS_TABLE} (
                key text NOT NULL,
                waiter text NOT NULL,
                until timestamptz NOT NULL,
                PRIMARY KEY (key, waiter)
            )
            """,
        ),
    ),
    Migration(
        35,
        "shared circuit breakers",
        (
            f"""
            CREATE TABLE IF NOT EXISTS {CIRCUITS_TABLE} (
                model text PRIMARY KEY,
                data jsonb NOT NULL,
                updated_at timestamptz NOT NULL DEFAULT now()
            )
            """,
        ),
    ),
    Migration(
        36,
        "units of work in flight, for graceful restart",
        (
            f"""
            CREATE TABLE IF NOT EXISTS {INFLIGHT_TABLE} (
                unit_id text PRIMARY KEY,
                key text NOT NULL,
                tenant_id text,
                thread_id text,
                run_id text,
                checkpoint_ns text,
                payload jsonb,
                tags jsonb,
                status text NOT NULL,
                owner text NOT NULL,
                owner_host text NOT NULL,
                owner_pid integer NOT NULL,
                started_at timestamptz NOT NULL DEFAULT now(),
                lease_until timestamptz NOT NULL,
                updated_at timestamptz NOT NULL DEFAULT now(),
                reason text,
                elapsed_s double precision,
                claims integer NOT NULL DEFAULT 0
            )
            """,
            f"CREATE INDEX IF NOT EXISTS {INFLIGHT_TABLE}_status"
            f" ON {INFLIGHT_TABLE} (status, updated_at)",
        ),
    ),
)
