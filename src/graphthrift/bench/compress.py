"""``graphthrift bench compress``: answer retention and speed of context compression.

Long because: the cases, the three baselines and the figures are one measurement, read
together against docs/benchmarks.md.

On SQuAD v1.1-format data (by default the bundled ``data/xquad_en/xquad.en.json.gz``) each
question's gold paragraph is hidden among distractors, compressed to the target ratio,
and counted as retained when a gold answer string is still in the compressed context.

Settings (the JSON describes them under ``settings``):
- ``single``: the gold paragraph alone, one chunk.
- ``multi`` (the headline figures): the gold paragraph and 4 others from the same article
  (topically close, as a retriever returns them), as 5 chunks in a seeded random order.
- ``long`` (the speed figures): the gold paragraph and 9 others (same article first, then
  other articles) concatenated into one chunk of about 1,500 tokens.

Baselines run in the same pass at the same per-question token budget: ``head`` (keep the
first tokens), ``random`` (drop random sentences) and ``bm25`` (rank sentences by
rank-bm25's BM25Okapi, or an equivalent built-in one when rank-bm25 is absent).
``--ratio`` is original ÷ kept tokens (3 keeps a third).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import resource
import time
import tracemalloc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from graphthrift.bench._common import (
    data_dir,
    machine,
    mode,
    percentiles,
    progress,
    tick,
    write_json,
)
from graphthrift.bench._data import DataFileError, DataSetMissing, data_file, read_text
from graphthrift.compress import (
    ExtractiveCompressor,
    normalise_answer_text,
    resolve_budget,
    split_sentences,
)
from graphthrift.text import get_encoding

TARGETS = {"answer_retention": 0.9, "ratio": 3.0, "ms_per_1k_tokens": 15.0}
CURVE_RATIOS = (1.5, 2.0, 3.0, 4.0, 6.0, 8.0)
DEFAULT_SQUAD = Path("xquad_en") / "xquad.en.json"
# cases per setting, the semantic configuration's subsample and the curve's cases, per size
SIZES: dict[str, tuple[int | None, int, int]] = {
    "quick": (120, 20, 60),
    "default": (200, 30, 100),
    "full": (None, 200, 400),
}
SETTINGS = {
    "single": "the gold paragraph alone, as one chunk",
    "multi": "the gold paragraph + 4 other paragraphs of the same article (then other "
    "articles if it has fewer), as 5 chunks in seeded random order",
    "long": "the gold paragraph + 9 other paragraphs (same article first, then others) "
    "concatenated with blank lines into ONE chunk, in seeded random order",
}
_WORD = re.compile(r"\w+")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--squad", metavar="PATH", help="SQuAD v1.1 JSON (default: xquad_en)")
    parser.add_argument(
        "--ratio",
        type=float,
        default=3.0,
        help="target compression, original ÷ kept tokens (default 3)",
    )
    parser.add_argument(
        "--limit",
        type=int,
        default=None,
        help="questions per setting (default: all; 120 with --quick)",
    )
    parser.add_argument("--seed", type=int, default=13, help="seed for distractors and baselines")
    parser.add_argument(
        "--no-semantic", action="store_true", help="skip the configurations that load the embedder"
    )


@dataclass(slots=True)
class Case:
    """One question with its context as the chunks a retriever would return."""

    question: str
    answers: list[str]
    chunks: list[str]


def load_squad(path: Path) -> list[tuple[str, list[tuple[str, str, list[str]]]]]:
    """``[(article title, [(paragraph, question, answers), ...]), ...]`` from SQuAD JSON."""
    raw = json.loads(read_text(path))
    articles = []
    for article in raw.get("data", []):
        items = []
        for para in article.get("paragraphs", []):
            context = para.get("context", "")
            for qa in para.get("qas", []):
                answers = [a["text"] for a in qa.get("answers", []) if a.get("text")]
                if answers and not qa.get("is_impossible"):
                    items.append((context, qa["question"], answers))
        if items:
            articles.append((article.get("title", ""), items))
    return articles


def build_cases(
    articles: Sequence[tuple[str, list[tuple[str, str, list[str]]]]], setting: str, seed: int
) -> list[Case]:
    """The cases of one setting; distractors are chosen with a seeded RNG."""
    rng = random.Random(f"{seed}:{setting}")
    paragraphs = [list(dict.fromkeys(ctx for ctx, _, _ in items)) for _, items in articles]
    everything = [p for ps in paragraphs for p in ps]
    cases = []
    for ai, (_, items) in enumerate(articles):
        for context, question, answers in items:
            if setting == "single":
                cases.append(Case(question, answers, [context]))
                continue
            want = 4 if setting == "multi" else 9
            same = [p for p in paragraphs[ai] if p != context]
            rng.shuffle(same)
            others = same[:want]
            while len(others) < want and len(everything) > len(others) + 1:
                pick = rng.choice(everything)
                if pick != context and pick not in others:
                    others.append(pick)
            chunks = [context, *others]
            rng.shuffle(chunks)
            cases.append(
                Case(question, answers, chunks if setting == "multi" else ["\n\n".join(chunks)])
            )
    return cases


# -- baselines ----------------------------------------------------------------------------------


def _head(question: str, chunks: list[str], budget: int, rng: random.Random) -> list[str]:
    """Keep the first ``budget`` tokens, chunk after chunk (what a plain truncation does)."""
    enc = get_encoding("o200k_base")
    out, left = [], budget
    for chunk in chunks:
        ids = enc.encode_ordinary(chunk)
        if len(ids) <= left:
            out.append(chunk)
            left -= len(ids)
            continue
        text = enc.decode(ids[:left])
        while text and len(enc.encode_ordinary(text)) > left:  # decoding may re-merge
            text = text[:-1]
        out.append(text)
        break
    return out


def _sentences(chunks: list[str]) -> list[tuple[int, str]]:
    return [(ci, c[a:b]) for ci, c in enumerate(chunks) for a, b in split_sentences(c)]


def _fill(
    chunks: list[str], order: Sequence[int], sents: list[tuple[int, str]], budget: int
) -> list[str]:
    """Take sentences in ``order`` while they fit; rebuild each chunk in original order."""
    enc = get_encoding("o200k_base")
    chosen: set[int] = set()
    left = budget
    for i in order:
        cost = len(enc.encode_ordinary(sents[i][1])) + (1 if chosen else 0)
        if cost <= left:
            chosen.add(i)
            left -= cost
    out = []
    for ci in range(len(chunks)):
        out.append(" ".join(s for i, (c, s) in enumerate(sents) if c == ci and i in chosen))
    # Exact guard, as the compressor has: drop the last kept sentence while over budget.
    while sum(len(enc.encode_ordinary(t)) for t in out) > budget and chosen:
        chosen.discard(max(chosen))
        out = [
            " ".join(s for i, (c, s) in enumerate(sents) if c == ci and i in chosen)
            for ci in range(len(chunks))
        ]
    return out


def _random(question: str, chunks: list[str], budget: int, rng: random.Random) -> list[str]:
    sents = _sentences(chunks)
    order = list(range(len(sents)))
    rng.shuffle(order)
    return _fill(chunks, order, sents, budget)


def _bm25_scores(docs: list[list[str]], query: list[str]) -> list[float]:
    try:
        from rank_bm25 import BM25Okapi
    except ImportError:  # the same formula, for installs without the dev extra
        return _builtin_bm25(docs, query)
    if not any(docs):
        return [0.0] * len(docs)
    return [float(s) for s in BM25Okapi(docs).get_scores(query)]


def _builtin_bm25(docs: list[list[str]], query: list[str]) -> list[float]:
    n = len(docs)
    avg = sum(len(d) for d in docs) / max(n, 1) or 1.0
    df: dict[str, int] = {}
    for d in docs:
        for t in set(d):
            df[t] = df.get(t, 0) + 1
    out = []
    for d in docs:
        score = 0.0
        for t in query:
            tf = d.count(t)
            if tf:
                idf = max(math.log((n - df[t] + 0.5) / (df[t] + 0.5)), 0.01)
                score += idf * tf * 2.5 / (tf + 1.5 * (0.25 + 0.75 * len(d) / avg))
        out.append(score)
    return out


def _bm25(question: str, chunks: list[str], budget: int, rng: random.Random) -> list[str]:
    sents = _sentences(chunks)
    docs = [_WORD.findall(s.lower()) for _, s in sents]
    scores = _bm25_scores(docs, _WORD.findall(question.lower()))
    order = sorted(range(len(sents)), key=lambda i: (-scores[i], i))
    return _fill(chunks, order, sents, budget)


BASELINES: dict[str, Callable[[str, list[str], int, random.Random], list[str]]] = {
    "head": _head,
    "random": _random,
    "bm25": _bm25,
}


# -- measuring ----------------------------------------------------------------------------------


def _retained(texts: Sequence[str], answers: Sequence[str]) -> bool:
    context = normalise_answer_text(" ".join(texts))
    return any(normalise_answer_text(a) in context for a in answers)


def _evaluate(
    compressor: ExtractiveCompressor, cases: list[Case], kept: float, timed: bool = True
) -> dict[str, Any]:
    """Retention, achieved ratio and timings of ``compressor`` over ``cases``."""
    original = kept_total = retained = 0
    samples: list[float] = []
    semantic = 0
    for case in cases:
        tick()
        start = time.perf_counter()
        result = compressor.compress(case.question, case.chunks, target_ratio=kept)
        samples.append((time.perf_counter() - start) * 1000)
        original += result.original_tokens
        kept_total += result.kept_tokens
        retained += _retained(result.texts, case.answers)
        semantic += bool(result.details.get("semantic"))
        assert result.kept_tokens <= result.budget, "budget exceeded"
    out: dict[str, Any] = {
        "n": len(cases),
        "ratio": round(original / max(kept_total, 1), 3),
        "answer_retention": round(retained / max(len(cases), 1), 4),
        "tokens_mean": round(original / max(len(cases), 1), 1),
        "semantic_used": round(semantic / max(len(cases), 1), 4),
    }
    if timed:
        out["ms_per_1k_tokens"] = round(sum(samples) / max(original, 1) * 1000, 3)
        out["ms"] = percentiles(samples, 50, 95)
    return out


def _evaluate_baseline(name: str, cases: list[Case], kept: float, seed: int) -> dict[str, Any]:
    fn = BASELINES[name]
    rng = random.Random(f"{seed}:{name}")
    enc = get_encoding("o200k_base")
    original = kept_total = retained = 0
    for case in cases:
        tick()
        tokens = sum(len(enc.encode_ordinary(c)) for c in case.chunks)
        budget = resolve_budget(tokens, kept, None)
        texts = fn(case.question, case.chunks, budget, rng)
        used = sum(len(enc.encode_ordinary(t)) for t in texts)
        assert used <= budget, f"{name} exceeded its budget"
        original += tokens
        kept_total += used
        retained += _retained(texts, case.answers)
    return {
        "ratio": round(original / max(kept_total, 1), 3),
        "answer_retention": round(retained / max(len(cases), 1), 4),
    }


def retention_curve(
    compressors: dict[str, ExtractiveCompressor],
    cases: list[Case],
    ratios: Sequence[float] = CURVE_RATIOS,
    seed: int = 13,
) -> list[dict[str, Any]]:
    """Answer retention at each target ratio (original ÷ kept) for ours and the baselines.

    Each point is ``{"target_ratio": r, name: {"ratio", "answer_retention"}, ...}`` with the
    achieved ratio, for every compressor and every baseline.
    """
    curve = []
    for r in ratios:
        point: dict[str, Any] = {"target_ratio": r}
        for name, compressor in compressors.items():
            res = _evaluate(compressor, cases, 1 / r, timed=False)
            point[name] = {"ratio": res["ratio"], "answer_retention": res["answer_retention"]}
        for b in BASELINES:
            point[b] = _evaluate_baseline(b, cases, 1 / r, seed)
        curve.append(point)
    return curve


def _peak_memory(compressor: ExtractiveCompressor, cases: list[Case], kept: float) -> float:
    """Peak Python allocation (MiB, tracemalloc) while compressing a few long cases."""
    tracemalloc.start()
    try:
        for case in cases:
            compressor.compress(case.question, case.chunks, target_ratio=kept)
        return round(tracemalloc.get_traced_memory()[1] / 2**20, 3)
    finally:
        tracemalloc.stop()


def find_squad(path: str | None) -> Path | None:
    """The SQuAD file to use: ``--squad``, else xquad_en in the data folder (gzipped or not)."""
    if path:
        return Path(path)
    try:
        return data_file("xquad_en", DEFAULT_SQUAD.name)
    except DataSetMissing:
        return None


def _skip(args: argparse.Namespace, console: Console, problem: DataSetMissing) -> dict[str, Any]:
    msg = f"skipped: {problem}" + ("" if getattr(args, "squad", None) else "; or pass --squad PATH")
    console.print(f"[yellow]bench compress {msg}[/]", soft_wrap=True)
    skipped = {"skipped": msg, "missing": [problem.dataset]}
    write_json(skipped, getattr(args, "json", None))
    return skipped


def run(args: argparse.Namespace, console: Console) -> dict[str, Any]:
    """Run the benchmark, print a table and return (and, with ``--json``, write) figures."""
    given = getattr(args, "squad", None)
    path = find_squad(given)
    if path is None or not path.is_file():
        name = "--squad" if given else "xquad_en"
        root = data_dir()
        where = path or (root / DEFAULT_SQUAD if root is not None else None)
        return _skip(args, console, DataSetMissing(name, where))
    try:
        articles = load_squad(path)
    except DataFileError as exc:
        return _skip(args, console, DataSetMissing("xquad_en", path, f"is damaged ({exc.problem})"))
    load_before = os.getloadavg()[0]
    ratio = float(getattr(args, "ratio", 3.0))
    if not ratio >= 1:
        raise ValueError(f"--ratio is original ÷ kept tokens and must be >= 1, got {ratio}")
    kept = 1 / ratio
    seed = int(getattr(args, "seed", 13))
    size_cases, size_semantic, size_curve = SIZES[mode(args)]
    limit = getattr(args, "limit", None) or size_cases
    semantic = not getattr(args, "no_semantic", False)
    cases = {s: _sample(build_cases(articles, s, seed), limit, seed) for s in SETTINGS}

    configs: dict[str, ExtractiveCompressor] = {
        "extractive-lexical": ExtractiveCompressor(embedder=False),
    }
    if semantic:
        configs["extractive"] = ExtractiveCompressor()  # semantic="auto", MiniLM
        configs["extractive-semantic"] = ExtractiveCompressor(semantic="always")
    main_name = "extractive" if semantic else "extractive-lexical"
    main = configs[main_name]
    for compressor in configs.values():  # load tokenizers / the embedder outside the timing
        compressor.compress("warm up?", ["Warm up the model. Twice over."], target_ratio=0.5)

    n_cases = sum(len(c) for c in cases.values())
    n_sub = sum(min(len(c), size_semantic) for c in cases.values()) if semantic else 0
    n_curve = min(len(cases["multi"]), size_curve)
    units = n_cases * (len(configs) - semantic + len(BASELINES)) + 2 * n_sub
    units += n_curve * len(CURVE_RATIOS) * (2 - (not semantic) + len(BASELINES))
    with progress(console, "bench compress", total=units):
        per_config, baselines, curve = _measure(
            configs, cases, kept, seed, main_name, size_semantic, size_curve
        )
    figures = _figures(args, per_config, baselines, curve, configs, cases, main, main_name)
    figures.update(target_ratio=ratio, data=str(path), seed=seed)
    # Timings are wall-clock on a machine that may be shared: the load says how much.
    figures["load_average_1m"] = {
        "start": round(load_before, 2),
        "end": round(os.getloadavg()[0], 2),
    }
    _print(console, figures, per_config, baselines)
    write_json(figures, getattr(args, "json", None))
    return figures


def _measure(
    configs: dict[str, ExtractiveCompressor],
    cases: dict[str, list[Case]],
    kept: float,
    seed: int,
    main_name: str,
    size_semantic: int,
    size_curve: int,
) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """Every configuration and baseline on every setting, and the retention curve."""
    per_config: dict[str, dict[str, Any]] = {}
    for name, compressor in configs.items():
        if name != "extractive-semantic":
            per_config[name] = {s: _evaluate(compressor, c, kept) for s, c in cases.items()}
            continue
        # Embedding a shortlist on every call is slow: this configuration gets a random
        # subsample, with the lexical configuration rerun on the same cases to compare.
        per_config[name] = {}
        for s, c in cases.items():
            sub = _sample(c, size_semantic, seed)
            same = _evaluate(configs["extractive-lexical"], sub, kept, timed=False)
            per_config[name][s] = {
                **_evaluate(compressor, sub, kept),
                "lexical_on_same_cases": {k: same[k] for k in ("ratio", "answer_retention")},
            }
    baselines = {
        b: {s: _evaluate_baseline(b, c, kept, seed) for s, c in cases.items()} for b in BASELINES
    }
    curve_cases = cases["multi"][:size_curve]
    curve_configs = {n: configs[n] for n in dict.fromkeys(("extractive-lexical", main_name))}
    curve = retention_curve(curve_configs, curve_cases, CURVE_RATIOS, seed)
    return per_config, baselines, curve


def _figures(
    args: argparse.Namespace,
    per_config: dict[str, dict[str, Any]],
    baselines: dict[str, dict[str, Any]],
    curve: list[dict[str, Any]],
    configs: dict[str, ExtractiveCompressor],
    cases: dict[str, list[Case]],
    main: ExtractiveCompressor,
    main_name: str,
) -> dict[str, Any]:
    """The JSON figures (docs/benchmarks.md), the headline on the ``multi`` setting."""
    kept = 1 / float(getattr(args, "ratio", 3.0))

    headline = per_config[main_name]["multi"]
    speed = per_config[main_name]["long"]
    figures: dict[str, Any] = {
        "n": headline["n"],
        "compressor": f"ExtractiveCompressor({main_name})",
        "ratio": headline["ratio"],
        "answer_retention": headline["answer_retention"],
        "ms_per_1k_tokens": speed["ms_per_1k_tokens"],
        "ms": speed["ms"],
        "speed_setting": "long",
        "headline_setting": "multi",
        "baselines": {b: v["multi"] for b, v in baselines.items()},
        "settings": {
            s: {
                "description": SETTINGS[s],
                **{name: per_config[name][s] for name in configs},
                "baselines": {b: baselines[b][s] for b in BASELINES},
            }
            for s in SETTINGS
        },
        "configurations": {
            "extractive-lexical": "embedder=False: BM25 + entities + answer type + coverage",
            "extractive": "the default: lexical, MiniLM consulted only when evidence is weak",
            "extractive-semantic": "semantic='always': MiniLM re-ranks an 8-sentence "
            "shortlist on every call (on a random subsample, see its n and "
            "lexical_on_same_cases)",
        },
        "targets": {
            **TARGETS,
            "met": {
                name: {
                    "retention": per_config[name]["multi"]["answer_retention"]
                    >= TARGETS["answer_retention"]
                    and per_config[name]["multi"]["ratio"] >= TARGETS["ratio"] - 0.05,
                    "speed": per_config[name]["long"]["ms_per_1k_tokens"]
                    <= TARGETS["ms_per_1k_tokens"],
                }
                for name in configs
            },
        },
        "peak_python_memory_mib": _peak_memory(main, cases["long"][:20], kept),
        "memory_note": "peak_python_memory_mib: tracemalloc peak over 20 long cases (Python "
        "allocations; tiktoken's Rust buffers are not traced); max_rss_mib: the whole "
        "benchmark process, embedder included",
        "max_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "curve": curve,
        "quick": mode(args) == "quick",
        "mode": mode(args),
        "bm25_impl": _bm25_impl(),
        "machine": machine(),
    }
    return figures


def _sample(cases: list[Case], limit: int | None, seed: int) -> list[Case]:
    if not limit or limit >= len(cases):
        return cases
    return random.Random(seed).sample(cases, limit)


def _bm25_impl() -> str:
    try:
        import rank_bm25  # noqa: F401
    except ImportError:
        return "builtin"
    return "rank_bm25.BM25Okapi"


def _print(
    console: Console, figures: dict[str, Any], per_config: dict[str, Any], baselines: dict[str, Any]
) -> None:
    table = Table(
        title=f"bench compress: answer retention and achieved ratio at target "
        f"{figures['target_ratio']}x (n={figures['n']}; ms per 1k tokens on long)"
    )
    table.add_column("method", no_wrap=True)
    for setting in SETTINGS:
        table.add_column(setting, justify="right", no_wrap=True)
    table.add_column("ms/1k", justify="right", no_wrap=True)
    rows = [*per_config.items(), *baselines.items()]
    for name, by_setting in rows:
        cells = [
            f"{by_setting[s]['answer_retention']:.3f} {by_setting[s]['ratio']:.1f}x"
            for s in SETTINGS
        ]
        speed = by_setting["long"].get("ms_per_1k_tokens")
        table.add_row(name, *cells, "-" if speed is None else f"{speed:.2f}")
    console.print(table)
