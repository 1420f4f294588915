"""``graphthrift cache tune``: pick a semantic-cache threshold from labelled pairs.

    graphthrift cache tune --pairs pairs.csv --target-precision 0.97 [--rule local|cumulative]
        [--band 0.02] [--confidence 0.95] [--plot curve.png] [--json out.json]

Embeds both sides of each pair (MiniLM by default), computes the precision/recall curve
of "same meaning when cosine >= t", picks the lowest t meeting the target (see
``tune_threshold``: ``local``, the default, also requires every similarity band of width
``--band`` above t to meet it, which holds up on held-out data at a cost in recall;
``cumulative`` only the pooled precision above t), prints it, saves the curve as a PNG and,
with ``--json``, writes ``threshold``, ``precision``, ``recall``.

It also shows what the lexical guard (on by default in ``SemanticCache``) does at that
threshold: ``lexical_guard`` holds the precision, recall and hit rate with the guard, the
share of would-be hits it rejects and why (numbers, identifiers, dates, negation, entities).
The threshold itself is tuned without the guard, so it holds with the guard off too.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from graphthrift.cache.guard import lexical_conflict
from graphthrift.cache.tuning import (
    RULES,
    CurvePoint,
    Rule,
    precision_recall_curve,
    tune_threshold,
)
from graphthrift.embed.embedders import default_embedder

__all__ = ["add_parser", "guard_effect", "plot_curve", "run", "tune"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``cache`` (with its ``tune`` subcommand) to the CLI's subparsers."""
    cache: argparse.ArgumentParser = subparsers.add_parser(
        "cache", help="semantic cache tools (tune a threshold)"
    )
    sub = cache.add_subparsers(dest="cache_command", metavar="COMMAND")
    tune_p = sub.add_parser(
        "tune", help="pick a threshold from labelled pairs", description=__doc__
    )
    tune_p.add_argument("--pairs", required=True, help="CSV/JSONL with text_a, text_b, label")
    tune_p.add_argument("--target-precision", type=float, default=0.97)
    tune_p.add_argument(
        "--confidence",
        type=float,
        default=0.95,
        help="require the target at this confidence (Wilson bound); 0 = plain precision",
    )
    tune_p.add_argument(
        "--rule",
        choices=RULES,
        default="local",
        help="local (default): every band above t meets the target too; cumulative: only"
        " the pooled precision above t (more recall, below target on shifted data)",
    )
    tune_p.add_argument(
        "--band", type=float, default=0.02, help="band width of the local rule (default 0.02)"
    )
    tune_p.add_argument("--plot", default="cache-curve.png", help="where to save the PNG")
    tune_p.add_argument("--json", metavar="PATH", help="write the result as JSON")
    return cache


def tune(
    pairs: list[tuple[str, str, int]],
    target_precision: float,
    *,
    confidence: float = 0.95,
    rule: Rule = "local",
    band: float = 0.02,
) -> tuple[CurvePoint, list[CurvePoint]]:
    """Embed the pairs, build the curve and pick the threshold."""
    chosen, curve, _ = _tune(pairs, target_precision, confidence, rule, band)
    return chosen, curve


def _tune(
    pairs: list[tuple[str, str, int]],
    target_precision: float,
    confidence: float,
    rule: Rule,
    band: float,
) -> tuple[CurvePoint, list[CurvePoint], np.ndarray[Any, Any]]:
    embedder = default_embedder()
    a = embedder.embed([p[0] for p in pairs])
    b = embedder.embed([p[1] for p in pairs])
    sims = (a * b).sum(axis=1)
    labels = np.array([bool(p[2]) for p in pairs])
    curve = precision_recall_curve(sims, labels)
    chosen = tune_threshold(curve, target_precision, rule=rule, band=band, confidence=confidence)
    return chosen, curve, sims


def guard_effect(
    pairs: list[tuple[str, str, int]], sims: np.ndarray[Any, Any], threshold: float
) -> dict[str, Any]:
    """Precision, recall and hit rate at ``threshold`` with and without the lexical guard.

    A pair is served when its similarity reaches the threshold (and, with the guard, when
    ``lexical_conflict`` finds no difference in numbers, identifiers, dates, negation or
    named entities). Recall is over the label-1 pairs.
    """
    labels = np.array([bool(p[2]) for p in pairs])
    reasons = [lexical_conflict(a, b) for a, b, _ in pairs]
    allowed = np.array([r is None for r in reasons])
    served = np.asarray(sims) >= threshold
    n, positives = len(pairs), int(labels.sum())

    def figures(mask: np.ndarray[Any, Any]) -> dict[str, Any]:
        hits, good = int(mask.sum()), int((mask & labels).sum())
        return {
            "precision": round(good / hits, 4) if hits else None,
            "recall": round(good / positives, 4) if positives else None,
            "hit_rate": round(hits / n, 4) if n else 0.0,
            "hits": hits,
        }

    rejected = served & ~allowed
    by_reason: dict[str, int] = {}
    for reason, hit in zip(reasons, rejected, strict=True):
        if hit and reason is not None:
            by_reason[reason] = by_reason.get(reason, 0) + 1
    return {
        "threshold": round(float(threshold), 4),
        "without_guard": figures(served),
        "with_guard": figures(served & allowed),
        "rejected_hits": int(rejected.sum()),
        "rejected_right": int((rejected & labels).sum()),
        "rejected_wrong": int((rejected & ~labels).sum()),
        "rejected_by_reason": dict(sorted(by_reason.items())),
    }


def plot_curve(
    curve: list[CurvePoint], chosen: CurvePoint | None, path: str | Path, title: str = ""
) -> Path:
    """Save precision, recall and hit rate against the threshold as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    xs = [p.threshold for p in curve]
    ax.plot(xs, [p.precision for p in curve], label="precision")
    ax.plot(xs, [p.recall for p in curve], label="recall")
    ax.plot(xs, [p.hit_rate for p in curve], label="hit rate", linestyle=":")
    if chosen is not None:
        ax.axvline(
            chosen.threshold, color="grey", linestyle="--", label=f"t = {chosen.threshold:.3f}"
        )
    ax.set_xlabel("cosine similarity threshold")
    ax.set_ylim(0, 1.02)
    ax.set_title(title or "semantic cache: precision / recall")
    ax.legend(loc="lower left")
    fig.tight_layout()
    target = _target(path)
    fig.savefig(target, dpi=100)
    plt.close(fig)
    return target


def run(args: argparse.Namespace, console: Console) -> dict[str, Any]:
    """Run ``graphthrift cache <command>``; returns the JSON figures."""
    if getattr(args, "cache_command", None) != "tune":
        raise ValueError("usage: graphthrift cache tune --pairs P --target-precision X")
    from graphthrift.bench.cache import load_pairs

    pairs = load_pairs(args.pairs)
    if not pairs:
        raise ValueError(f"{args.pairs} holds no pairs")
    chosen, curve, sims = _tune(pairs, args.target_precision, args.confidence, args.rule, args.band)
    guard = guard_effect(pairs, sims, chosen.threshold)
    plot = plot_curve(curve, chosen, args.plot, f"{Path(args.pairs).name}: {len(pairs)} pairs")
    figures = {
        "threshold": round(chosen.threshold, 4),
        "precision": round(chosen.precision, 4),
        "recall": round(chosen.recall, 4),
        "hit_rate": round(chosen.hit_rate, 4),
        "n_pairs": len(pairs),
        "target_precision": args.target_precision,
        "rule": args.rule,
        "band": args.band,
        "confidence": args.confidence,
        "plot": str(plot),
        "curve": [p.as_dict() for p in curve if round(p.threshold, 2) == p.threshold],
        "lexical_guard": guard,
    }
    console.print(
        f"threshold [bold]{figures['threshold']}[/]: precision {figures['precision']}, "
        f"recall {figures['recall']} on {len(pairs)} pairs; curve saved to {plot}"
    )
    with_guard = guard["with_guard"]
    console.print(
        f"with the lexical guard (the SemanticCache default): precision"
        f" {with_guard['precision']}, recall {with_guard['recall']}; it rejected"
        f" {guard['rejected_hits']} hits ({guard['rejected_wrong']} wrong,"
        f" {guard['rejected_right']} right) {guard['rejected_by_reason']}"
    )
    if args.json:
        _target(args.json).write_text(
            json.dumps(figures, indent=2, default=str) + "\n", encoding="utf-8"
        )
    return figures


def _target(path: str | Path) -> Path:
    """``path``, with its parent folders created."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    return target
