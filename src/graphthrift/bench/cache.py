"""``graphthrift bench cache``: precision, recall and speed of the semantic cache.

Long because: one benchmark's data loading, calibration, policy replay and speed runs feed
one JSON contract (docs/benchmarks.md) and read in its order; each part is a short function.

Method (every quality figure on held-out data):

- banking77: the cache holds answered questions from the train file (one entry each);
  queries are the test file's questions. A hit is right when the served entry has the
  query's intent. Thresholds are calibrated on the train file alone, cross-fitted: each
  fifth queries the other four fifths (a cache about as dense as the test one).
  ``--quick``: 2,000 train and 400 test questions.
- stsb (score >= 4 same, <= 2 different) and any ``--pairs`` file (text_a, text_b, label):
  calibrated on a train split of pairs (stsb: its train file; a pairs file: a random
  half); on the test split the cache holds every text_a and each text_b is a query, right
  when it hits its own partner of a label-1 pair or a stored question identical to it after
  normalisation. ``--quick``: 800 / 300 stsb pairs. When no threshold reaches the target
  on calibration, ``tuned`` serves only identical questions (threshold 1.0).
- Policies side by side: ``static_0.92`` (the common default), ``tuned`` (lowest threshold
  whose calibration precision meets ``--target-precision`` at 95 % confidence under
  ``--rule``, default ``local``: every 0.02 band above it meets the target too), ``tuned_<other
  rule>`` (the same with the other rule, e.g. ``tuned_cumulative``) and
  ``adaptive`` (``AdaptivePolicy(max_error=1-target)``, its prior fitted on the calibration
  split, then replaying the test queries in order: each miss is judged by ``verify`` on its
  fresh answer and each served hit by ``feedback``, with the ground truth).
- Lexical guard (``SemanticCache``'s default, ``graphthrift.cache.guard``): for each
  threshold policy, ``policies[p]["lexical_guard"]`` holds the same figures with the
  guard applied to the served hits (a hit whose question differs from the query in numbers,
  identifiers, dates, negation or named entities becomes a miss), and ``lexical_guard``
  per data set how many hits it rejected at the tuned threshold, right and wrong, and why.
  The candidates themselves are found with the guard off, so the other figures are those of
  the embedding alone.
- Speed: the first data set's test entries plus synthetic filler up to ``--entries`` rows
  (real embeddings plus Gaussian noise, 50 other tenants, stated in the JSON) in one
  HNSW-indexed table; later data sets add their entries to the same table. ``lookup_ms``
  is the database search of ``SemanticCache.lookup``, ``embed_ms`` the MiniLM embedding of
  one query, ``total_ms`` their sum per query; ``exact_lookup_ms`` is ``ExactCache.lookup``
  on stored questions. ``peak_rss_mb`` is the benchmark process's peak resident memory and
  ``machine.loadavg_*`` the load average around the run (the figures are wall-clock).
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import json
import math
import os
import random
import resource
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from graphthrift.bench._common import (
    machine,
    mode,
    percentiles,
    progress,
    scratch_store,
    tick,
    write_json,
)
from graphthrift.bench._data import DataSetMissing, data_file, read_set_file
from graphthrift.cache.guard import lexical_conflict
from graphthrift.cache.keys import CacheQuery, CacheScope, key_hash
from graphthrift.cache.policy import AdaptivePolicy
from graphthrift.cache.schema import ENTRIES_TABLE, hnsw_index_sql
from graphthrift.cache.tuning import RULES, precision_recall_curve, tune_threshold
from graphthrift.embed.embedders import as_embedder, default_embedder
from graphthrift.store.postgres import Store

TARGETS = {"tuned_precision": 0.97, "lookup_total_p95_ms": 10.0, "exact_p95_ms": 1.0}
STATIC_DEFAULT = 0.92
# per run size: (calibration, test) questions of each set, rows for the speed test, exact lookups
SIZES: dict[str, dict[str, Any]] = {
    "quick": {"banking77": (2000, 400), "stsb": (800, 300), "entries": 5_000, "exact": 300},
    "default": {"banking77": (3_000, 800), "stsb": (1_500, 500), "entries": 20_000, "exact": 500},
    "full": {"banking77": (10_003, 3_080), "stsb": (5_749, 1_379), "entries": 100_000, "exact": 2000},
}  # fmt: skip
FOLDS = 5
SAMPLE = [  # a tiny pairs sample (tests write it as a --pairs file)
    ("How do I reset my password?", "How can I change my password?", 1),
    ("When will my card arrive?", "My new card has not arrived yet", 1),
    ("How do I close my account?", "I want to delete my account", 1),
    ("What is the exchange rate?", "How do I reset my password?", 0),
    ("Can I get a refund?", "Where is my card?", 0),
    ("Why was I charged a fee?", "Is there a fee for transfers?", 0),
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pairs", help="a pairs file (CSV/JSONL: text_a, text_b, label)")
    parser.add_argument("--threshold", type=float, help="report this threshold as 'tuned'")
    parser.add_argument("--target-precision", type=float, default=0.97)
    parser.add_argument(
        "--rule", choices=RULES, default="local", help="tuning rule of the 'tuned' row"
    )
    parser.add_argument("--entries", type=int, default=100_000, help="rows for the speed test")
    parser.add_argument("--datasets", default="banking77,stsb", help="comma-separated")


def load_pairs(path: str | Path) -> list[tuple[str, str, int]]:
    """A pairs file: CSV or JSONL (optionally gzipped) with text_a, text_b, label."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as fh:
        if ".jsonl" in path.name or ".json" in path.name:
            rows = [json.loads(line) for line in fh if line.strip()]
        else:
            rows = list(csv.DictReader(fh))
    pairs = []
    for i, row in enumerate(rows):
        try:
            pairs.append((str(row["text_a"]), str(row["text_b"]), int(float(row["label"]))))
        except (KeyError, ValueError) as exc:
            raise ValueError(f"{path} row {i}: needs text_a, text_b, label (0/1): {exc}") from exc
    return pairs


def _stsb(split: str) -> list[tuple[str, str, int]]:
    pairs = []
    for line in read_set_file("stsb", f"sts-{split}.csv").splitlines():
        cols = line.split("\t")
        if len(cols) < 7:
            continue
        score = float(cols[4])
        if score >= 4 or score <= 2:
            pairs.append((cols[5], cols[6], int(score >= 4)))
    if not pairs:
        raise DataSetMissing("stsb", data_file("stsb", f"sts-{split}.csv"), "holds no scored pairs")
    return pairs


def _banking(split: str) -> tuple[list[str], list[str]]:
    rows = list(csv.DictReader(io.StringIO(read_set_file("banking77", f"{split}.csv"))))
    if not rows:
        raise DataSetMissing("banking77", data_file("banking77", f"{split}.csv"), "holds no rows")
    return [r["text"] for r in rows], [r["category"] for r in rows]


@dataclass
class Task:
    """Entries the cache holds and queries against them, with group ids for correctness.

    When ``queries is entries`` the task is cross-fitted: each of ``FOLDS`` folds queries
    the entries of the others.
    """

    name: str
    entries: list[str]
    entry_groups: list[str]
    queries: list[str]
    query_groups: list[str]


def _pair_task(name: str, pairs: Sequence[tuple[str, str, int]]) -> Task:
    """Entries are the distinct text_a; text_b queries them. A query is right on its label-1
    partner, or on a stored question identical to it after normalisation (same meaning,
    whatever its own pair's label says)."""
    groups: dict[str, str] = {}
    entries: dict[str, str] = {}
    for a, _, _ in pairs:
        key = CacheQuery(a).normalized
        groups.setdefault(key, f"e{len(groups)}")
        entries.setdefault(a, groups[key])
    queries, query_groups = [], []
    for i, (a, b, label) in enumerate(pairs):
        queries.append(b)
        same = groups.get(CacheQuery(b).normalized)
        query_groups.append(same or (entries[a] if label else f"neg{i}"))
    return Task(name, list(entries), list(entries.values()), queries, query_groups)


def _nearest(entries: np.ndarray[Any, Any], queries: np.ndarray[Any, Any]) -> tuple[Any, Any]:
    sims = queries @ entries.T
    best = sims.argmax(axis=1)
    return best, sims[np.arange(len(queries)), best]


def _evaluate(
    sims: np.ndarray[Any, Any], correct: np.ndarray[Any, Any], served: np.ndarray[Any, Any]
) -> dict[str, Any]:
    n = len(sims)
    hits = int(served.sum())
    good = int((served & correct).sum())
    answerable = int(correct.sum())
    return {
        "hit_rate": round(hits / n, 4) if n else 0.0,
        "precision": round(good / hits, 4) if hits else None,
        "recall": round(good / answerable, 4) if answerable else None,
        "false_hit_rate": round((hits - good) / n, 4) if n else 0.0,
        "hits": hits,
    }


def _copy_entries(
    store: Store,
    rows: list[tuple[str, str, str, np.ndarray[Any, Any]]],
    model_id: str,
    layer: str = "semantic",
) -> None:
    """COPY (tenant, namespace, text, vector) rows into the cache table."""
    cols = (
        "layer, tenant_id, namespace, embedding_model, key_hash, query, normalized_query,"
        " answer, dim, embedding"
    )
    with store.raw_connection() as conn:
        with conn.cursor() as cur, cur.copy(f"COPY {ENTRIES_TABLE} ({cols}) FROM STDIN") as copy:
            for i, (tenant, namespace, text, vector) in enumerate(rows):
                scope = CacheScope(tenant_id=tenant, namespace=namespace)
                query = CacheQuery(text)
                kh = key_hash(layer, scope, model_id if layer == "semantic" else "", query)
                if layer == "semantic":
                    kh = f"{kh}-{i}"  # duplicate texts stay separate entries
                literal = "[" + ",".join(f"{x:.6g}" for x in vector) + "]" if len(vector) else None
                copy.write_row(
                    (layer, tenant, namespace, model_id if layer == "semantic" else "", kh,
                     text, query.normalized, f"answer:{i}", len(vector) or None, literal)
                )  # fmt: skip
        conn.commit()


def _tasks(args: argparse.Namespace, console: Console) -> list[tuple[Task, Task, bool]]:
    """(calibration task, test task, is_pairs) per dataset."""
    rng = random.Random(7)
    names = [n.strip() for n in args.datasets.split(",") if n.strip()]
    out = []
    missing: list[DataSetMissing] = []
    if "banking77" in names and not args.pairs:
        try:
            texts, intents = _banking("train")
            test_texts, test_intents = _banking("test")
        except DataSetMissing as exc:
            missing.append(exc)
        else:
            n_train, n_test = SIZES[mode(args)]["banking77"]
            if n_train < len(texts):
                idx = rng.sample(range(len(texts)), n_train)
                texts, intents = [texts[i] for i in idx], [intents[i] for i in idx]
            if n_test < len(test_texts):
                tidx = rng.sample(range(len(test_texts)), n_test)
                test_texts = [test_texts[i] for i in tidx]
                test_intents = [test_intents[i] for i in tidx]
            # calibration cross-fits on the train file: each fifth queries the other four
            # fifths, so the calibration cache is about as dense as the test cache
            calib = Task("banking77", texts, intents, texts, intents)
            out.append((calib, Task("banking77", texts, intents, test_texts, test_intents), False))
    if "stsb" in names and not args.pairs:
        try:
            train, test = _stsb("train"), _stsb("test")
        except DataSetMissing as exc:
            missing.append(exc)
        else:
            n_train, n_test = SIZES[mode(args)]["stsb"]
            train = rng.sample(train, n_train) if n_train < len(train) else train
            test = rng.sample(test, n_test) if n_test < len(test) else test
            out.append((_pair_task("stsb", train), _pair_task("stsb", test), True))
    if args.pairs:
        pairs = load_pairs(args.pairs)
        rng.shuffle(pairs)
        cut = max(1, len(pairs) // 2)
        name = Path(args.pairs).stem
        out.append((_pair_task(name, pairs[:cut]), _pair_task(name, pairs[cut:]), True))
    if not out:
        raise missing[0] if missing else ValueError(f"--datasets {args.datasets!r}: no known set")
    for problem in missing:
        console.print(f"[yellow]bench cache: {problem}; running the other set[/]", soft_wrap=True)
    return out


def _embed(embedder: Any, texts: list[str], memo: dict[str, Any]) -> np.ndarray[Any, Any]:
    """Embed in batches, reusing vectors already computed in this run."""
    todo = [t for t in dict.fromkeys(texts) if t not in memo]
    for start in range(0, len(todo), 256):
        chunk = todo[start : start + 256]
        memo.update(zip(chunk, embedder.embed(chunk), strict=True))
        tick(len(chunk))
    return np.asarray([memo[t] for t in texts])


def _calibration_pairs(
    calib: Task, embedder: Any, memo: dict[str, Any]
) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """(nearest entry id, its similarity, whether serving it is right) per calibration query."""
    ce = _embed(embedder, calib.entries, memo)
    groups = np.asarray(calib.entry_groups)
    if calib.queries is not calib.entries:
        best, sims = _nearest(ce, _embed(embedder, calib.queries, memo))
        return best, sims, groups[best] == np.asarray(calib.query_groups)
    fold = np.random.default_rng(5).permutation(len(ce)) % FOLDS
    best = np.zeros(len(ce), dtype=np.int64)
    sims = np.zeros(len(ce))
    for f in range(FOLDS):
        held, rest = np.nonzero(fold == f)[0], np.nonzero(fold != f)[0]
        b, sims[held] = _nearest(ce[rest], ce[held])
        best[held] = rest[b]
    return best, sims, groups[best] == groups


def _rules(args: argparse.Namespace) -> tuple[str, str]:
    """(the 'tuned' row's rule, the other rule)."""
    rule = str(getattr(args, "rule", None) or "local")
    return rule, next(r for r in RULES if r != rule)


def _calibrate(
    calib: Task, embedder: Any, args: argparse.Namespace, memo: dict[str, Any]
) -> tuple[list[Any], dict[str, float | None], AdaptivePolicy]:
    """The calibration curve, the tuned threshold per rule (None: target unreachable) and
    the adaptive policy warm-started on the same observations."""
    best, sims, ok = _calibration_pairs(calib, embedder, memo)
    answerable = sum(1 for g in calib.query_groups if g in set(calib.entry_groups))
    curve = precision_recall_curve(sims, ok, answerable=answerable)
    tuned: dict[str, float | None] = {}
    for rule in RULES:
        if args.threshold is not None:
            tuned[rule] = float(args.threshold)
            continue
        try:
            chosen = tune_threshold(curve, args.target_precision, rule=rule, confidence=0.95)
            tuned[rule] = chosen.threshold
        except ValueError:
            tuned[rule] = None
    adaptive = AdaptivePolicy(max_error=round(1 - args.target_precision, 6))
    adaptive.observe_many(sims.tolist(), ok.tolist(), entries=best.tolist())
    return curve, tuned, adaptive


def _replay_adaptive(
    adaptive: AdaptivePolicy, cand: list[int], sims: list[float], correct: list[bool]
) -> tuple[np.ndarray[Any, Any], list[float]]:
    """Serve the test queries in order, learning per entry as a deployment would.

    A miss is judged when its fresh answer is stored (``verify``, here the ground truth);
    a served hit is judged by ``feedback`` (the ground truth too). Returns what was served
    and the policy's decision time per query (ms).
    """
    observations: dict[int, tuple[list[float], list[bool]]] = {}
    served, decide_ms = [], []
    for c, s, ok in zip(cand, sims, correct, strict=True):
        obs = observations.setdefault(c, ([], []))
        t0 = time.perf_counter()
        serve = c >= 0 and adaptive.serve(s, obs[0], obs[1])
        decide_ms.append((time.perf_counter() - t0) * 1000)
        served.append(serve)
        if c >= 0 and s >= adaptive.min_similarity:
            obs[0].append(s)
            obs[1].append(ok)
            adaptive.observe(s, ok)
    return np.array(served, dtype=bool), decide_ms


def _load(
    store: Store, rows: list[tuple[str, str, str, np.ndarray[Any, Any]]], model: str
) -> float:
    """COPY rows into the cache table with the HNSW index dropped, then rebuild it (bulk
    builds are much faster than row-by-row inserts). Returns seconds."""
    from sqlalchemy import text

    t0 = time.perf_counter()
    with store.connect() as conn:
        conn.execute(text(f"DROP INDEX IF EXISTS {ENTRIES_TABLE}_hnsw_384"))
        conn.commit()
    _copy_entries(store, rows, model)
    with store.connect() as conn:
        conn.execute(text("SET maintenance_work_mem = '1GB'"))
        conn.execute(text(hnsw_index_sql(384)))
        conn.execute(text(f"ANALYZE {ENTRIES_TABLE}"))
        conn.commit()
    return time.perf_counter() - t0


def _count(store: Store) -> tuple[int, float]:
    """Semantic rows in the table and the table's size with its indexes (MB)."""
    from sqlalchemy import text

    with store.connect() as conn:
        n = conn.execute(
            text(f"SELECT count(*) FROM {ENTRIES_TABLE} WHERE layer = 'semantic'")
        ).scalar_one()
        size = conn.execute(text(f"SELECT pg_total_relation_size('{ENTRIES_TABLE}')")).scalar_one()
    return int(n), round(int(size) / 2**20, 1)


def _filler(
    base: np.ndarray[Any, Any], count: int, namespace: str
) -> list[tuple[str, str, str, np.ndarray[Any, Any]]]:
    """Synthetic rows of 50 other tenants: real embeddings plus Gaussian noise, normalised."""
    rng = np.random.default_rng(11)
    rows = []
    for start in range(0, count, 5000):
        n = min(5000, count - start)
        noise = rng.normal(0, 1.05 / np.sqrt(base.shape[1]), (n, base.shape[1]))
        v = base[(np.arange(start, start + n)) % len(base)] + noise
        v = (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)
        rows += [
            (f"other-{(start + i) % 50}", namespace, f"filler {start + i}", v[i]) for i in range(n)
        ]
    return rows


def _exact_speed(store: Store, name: str, texts: list[str], n: int) -> dict[str, float]:
    """p50/p95 of ``ExactCache.lookup`` hits on ``texts`` stored in the exact layer."""
    from graphthrift.cache.exact import ExactCache

    unique = list({CacheQuery(t).normalized: t for t in texts}.values())  # one per key
    _copy_entries(store, [("bench", f"exact-{name}", t, np.empty(0)) for t in unique], "", "exact")
    exact = ExactCache(store, tenant_id="bench", namespace=f"exact-{name}", timeout=2.0)
    exact.lookup(unique[0])  # warm the connection pool
    times = []
    for t in unique[:n]:
        s = time.perf_counter()
        exact.lookup(t)
        times.append((time.perf_counter() - s) * 1000)
    exact.flush()  # the batched hit counts, before the scratch database goes away
    return percentiles(times, 50, 95)


def _peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def run(args: argparse.Namespace, console: Console) -> dict[str, Any]:
    from graphthrift.cache.semantic import SemanticCache

    quick = mode(args) == "quick"
    sizes = SIZES[mode(args)]
    entries_target = min(args.entries, sizes["entries"])
    embedder = default_embedder()
    tasks = _tasks(args, console)
    results: dict[str, Any] = {}
    memo: dict[str, Any] = {}
    load_before = _loadavg()
    base = Store(args.url)
    try:
        units = sum(
            len(set(c.entries) | set(c.queries) | set(t.entries))
            + 2 * len(t.queries)
            + sizes["exact"]
            + (max(entries_target, len(t.entries)) if k == 0 else len(t.entries)) / 20
            for k, (c, t, _) in enumerate(tasks)
        )
        with scratch_store(base) as store, progress(console, "bench cache", total=units):
            for k, (calib, test, _) in enumerate(tasks):
                console.print(f"[bold]{test.name}[/]: calibrating on {len(calib.queries)} queries")
                curve, tuned_by_rule, adaptive = _calibrate(calib, embedder, args, memo)
                rule, other = _rules(args)
                tuned_or_none, other_or_none = tuned_by_rule[rule], tuned_by_rule[other]
                # with no threshold reaching the target, serve only identical questions
                tuned = 1.0 if tuned_or_none is None else tuned_or_none
                tuned_other = 1.0 if other_or_none is None else other_or_none

                # the test cache: real entries of tenant "bench" (+ filler of other tenants
                # the first time, so that the table holds at least `entries` rows)
                te = _embed(embedder, test.entries, memo)
                vectors, embed_ms = {}, []
                for q in test.queries:
                    tick()
                    s = time.perf_counter()
                    vectors[q] = embedder.embed([q])[0]
                    embed_ms.append((time.perf_counter() - s) * 1000)
                namespace = test.name
                rows = [("bench", namespace, t, v) for t, v in zip(test.entries, te, strict=True)]
                filler = max(0, entries_target - len(rows)) if k == 0 else 0
                rows += _filler(te, filler, namespace)
                load_s = _load(store, rows, embedder.model_id)
                tick(len(rows) / 20)  # COPY and the HNSW build
                entries, table_mb = _count(store)

                lookup_table = dict(vectors)
                fixed = as_embedder(
                    lambda texts, table=lookup_table: [table[t] for t in texts],
                    model_id=embedder.model_id,
                )
                cache = SemanticCache(
                    store, fixed, tenant_id="bench", namespace=namespace, threshold=-1.0,
                    timeout=2.0, lexical_guard=False,
                )  # fmt: skip
                cache.lookup(test.queries[0])  # warm the connection pool
                index = {t: i for i, t in enumerate(test.entries)}
                cand, cand_sim, lookup_ms = [], [], []
                for q in test.queries:
                    tick()
                    s = time.perf_counter()
                    hit = cache.lookup(q)
                    lookup_ms.append((time.perf_counter() - s) * 1000)
                    cand.append(index.get(hit.query, -1) if hit else -1)
                    cand_sim.append(hit.similarity if hit else -1.0)
                qs = np.array(cand_sim)
                correct = np.array(
                    [
                        c >= 0 and test.entry_groups[c] == g
                        for c, g in zip(cand, test.query_groups, strict=True)
                    ]
                )
                reasons = [
                    lexical_conflict(test.entries[c], q) if c >= 0 else None
                    for c, q in zip(cand, test.queries, strict=True)
                ]
                allowed = np.array([r is None for r in reasons])
                policies = {
                    f"static_{STATIC_DEFAULT}": _evaluate(qs, correct, qs >= STATIC_DEFAULT),
                    "tuned": _evaluate(qs, correct, qs >= tuned),
                    f"tuned_{other}": _evaluate(qs, correct, qs >= tuned_other),
                }
                for name, t in (
                    (f"static_{STATIC_DEFAULT}", STATIC_DEFAULT),
                    ("tuned", tuned),
                    (f"tuned_{other}", tuned_other),
                ):
                    policies[name]["lexical_guard"] = _evaluate(qs, correct, (qs >= t) & allowed)
                guard = _guard_summary(qs >= tuned, correct, allowed, reasons)
                prior, cold = adaptive.prior, adaptive.threshold()
                served, decide_ms = _replay_adaptive(
                    adaptive, cand, qs.tolist(), [bool(c) for c in correct]
                )
                policies["adaptive"] = _evaluate(qs, correct, served)
                policies["tuned"]["threshold"] = round(tuned, 4)
                policies["tuned"]["target_reached_on_calibration"] = tuned_or_none is not None
                policies["tuned"]["rule"] = rule
                policies[f"tuned_{other}"].update(
                    threshold=round(tuned_other, 4),
                    target_reached_on_calibration=other_or_none is not None,
                    rule=other,
                )
                policies[f"static_{STATIC_DEFAULT}"]["threshold"] = STATIC_DEFAULT
                policies["adaptive"].update(
                    max_error=adaptive.max_error,
                    cold_threshold=round(cold, 4) if math.isfinite(cold) else None,
                    level=round(prior.level, 4),
                    entry_share=prior.share,
                    decide_ms=percentiles(decide_ms, 50, 95),
                )
                total = [a + b for a, b in zip(embed_ms, lookup_ms, strict=True)]
                test_curve = precision_recall_curve(
                    qs,
                    correct,
                    answerable=sum(1 for g in test.query_groups if g in set(test.entry_groups)),
                )
                exact_ms = _exact_speed(store, test.name, test.entries, sizes["exact"])
                tick(sizes["exact"])
                results[test.name] = {
                    "n_queries": len(test.queries),
                    "entries": entries,
                    "real_entries": len(test.entries),
                    "filler_entries": filler,
                    "filler": (
                        "synthetic: real test-entry embeddings + Gaussian noise, 50 other"
                        " tenants, same table and HNSW index"
                    ),
                    "calibration_queries": len(calib.queries),
                    "calibration": (
                        f"{FOLDS}-fold cross-fit on the train file"
                        if calib.queries is calib.entries
                        else "train split of pairs"
                    ),
                    "threshold": round(tuned, 4),
                    **{k: v for k, v in policies["tuned"].items() if k != "threshold"},
                    "policies": policies,
                    "lookup_ms": percentiles(lookup_ms, 50, 95),
                    "embed_ms": percentiles(embed_ms, 50, 95),
                    "total_ms": percentiles(total, 50, 95),
                    "exact_lookup_ms": exact_ms,
                    "peak_rss_mb": _peak_rss_mb(),
                    "table_mb": table_mb,
                    "load_s": round(load_s, 2),
                    "lexical_guard": guard,
                    "curve": [
                        p.as_dict() for p in test_curve if round(p.threshold, 2) == p.threshold
                    ],
                    "calibration_curve": [
                        p.as_dict() for p in curve if round(p.threshold, 2) == p.threshold
                    ],
                }
                console.print(_table(test.name, policies))
                cache.flush()  # batched hit counts, before the database goes away
    finally:
        base.close()
    primary = results[tasks[0][1].name]
    figures: dict[str, Any] = {
        **primary,
        "dataset": tasks[0][1].name,
        "datasets": results,
        "peak_rss_mb": _peak_rss_mb(),
        "peak_rss_note": "the benchmark process (ru_maxrss); the database is table_mb on disk",
        "adaptive_learning": (
            "AdaptivePolicy(max_error = 1 - target_precision), prior fitted on the calibration"
            " split; in the test replay each miss is judged by verify on its fresh answer and"
            " each served hit by feedback, both with the ground truth"
        ),
        "targets": TARGETS,
        "target_precision": args.target_precision,
        "quick": quick,
        "mode": mode(args),
        "machine": {**machine(), "loadavg_before": load_before, "loadavg_after": _loadavg()},
    }
    console.print(
        f"lookup p95 {primary['lookup_ms']['p95']} ms, embed p95 {primary['embed_ms']['p95']} ms,"
        f" exact p95 {primary['exact_lookup_ms']['p95']} ms at {primary['entries']:,} entries"
    )
    write_json(figures, getattr(args, "json", None))
    return figures


def _guard_summary(
    served: np.ndarray[Any, Any],
    correct: np.ndarray[Any, Any],
    allowed: np.ndarray[Any, Any],
    reasons: list[str | None],
) -> dict[str, Any]:
    """What the lexical guard did to the hits served at the tuned threshold."""
    rejected = served & ~allowed
    by_reason: dict[str, dict[str, int]] = {}
    for reason, hit, right in zip(reasons, rejected, correct, strict=True):
        if hit and reason is not None:
            row = by_reason.setdefault(reason, {"right": 0, "wrong": 0})
            row["right" if right else "wrong"] += 1
    return {
        "at": "tuned threshold",
        "rejected_hits": int(rejected.sum()),
        "rejected_wrong": int((rejected & ~correct).sum()),
        "rejected_right": int((rejected & correct).sum()),
        "rejected_by_reason": dict(sorted(by_reason.items())),
    }


def _loadavg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def _table(name: str, policies: dict[str, dict[str, Any]]) -> Table:
    table = Table(title=f"semantic cache on {name} (held-out test split)")
    for col in ("policy", "hit_rate", "precision", "recall", "false_hit_rate"):
        table.add_column(col, justify="left" if col == "policy" else "right")
    cols = ("hit_rate", "precision", "recall", "false_hit_rate")
    for policy, row in policies.items():
        table.add_row(policy, *(str(row[k]) for k in cols))
        if "lexical_guard" in row:
            table.add_row(
                f"{policy} + lexical guard", *(str(row["lexical_guard"][k]) for k in cols)
            )
    return table
