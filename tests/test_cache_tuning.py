"""``tune_threshold``'s rules: cumulative precision against local (per-band) precision."""

from __future__ import annotations

import numpy as np
import pytest

from graphthrift.cache.tuning import RULES, precision_recall_curve, tune_threshold


def _spread(lo: float, hi: float, n: int) -> list[float]:
    return [lo + (hi - lo) * (i + 0.5) / n for i in range(n)]


def _bad_band_pairs() -> tuple[list[float], list[bool]]:
    """3,000 right pairs above 0.92, a bad band [0.90, 0.92) (75 % right) and a clean band
    [0.88, 0.90) below it: pooled above 0.88 the precision is 0.98, well above 0.97."""
    sims = _spread(0.92, 1.0, 3000) + _spread(0.90, 0.92, 300) + _spread(0.88, 0.90, 300)
    labels = [True] * 3000 + [i % 4 != 0 for i in range(300)] + [True] * 300
    sims += _spread(0.70, 0.88, 400)
    labels += [i % 2 == 0 for i in range(400)]
    return sims, labels


def test_local_rule_picks_above_a_bad_band_the_cumulative_rule_accepts() -> None:
    sims, labels = _bad_band_pairs()
    curve = precision_recall_curve(sims, labels)
    cumulative = tune_threshold(curve, 0.97, rule="cumulative")
    local = tune_threshold(curve, 0.97, rule="local")
    assert tune_threshold(curve, 0.97) == local  # local is the default
    assert cumulative.threshold < 0.90 <= 0.91 < local.threshold <= 0.925
    assert cumulative.precision >= 0.97 and cumulative.recall > local.recall
    # what local guards against: the hits just above the cumulative threshold are bad
    s, y = np.asarray(sims), np.asarray(labels)
    just_above = (s >= 0.90) & (s < 0.92)
    assert y[just_above].mean() < 0.8
    band = (s >= local.threshold) & (s < local.threshold + 0.02)
    assert y[band].mean() >= 0.97
    # a wider band dilutes the bad one with clean pairs; a narrower one isolates it
    assert tune_threshold(curve, 0.97, rule="local", band=0.2).threshold < local.threshold
    assert tune_threshold(curve, 0.97, rule="local", band=0.01).threshold > 0.91


def test_small_bands_are_merged_upward_instead_of_blocking() -> None:
    # 1,000 right at 0.91..0.93, an isolated cluster of 3 (1 wrong) at 0.96, 500 right at
    # 0.99..1: whatever the anchor, the 0.02 band holding the cluster holds nothing else
    sims = [*_spread(0.91, 0.93, 1000), 0.9595, 0.96, 0.9605, *_spread(0.99, 1.0, 500)]
    labels = [True] * 1000 + [True, False, True] + [True] * 500
    curve = precision_recall_curve(sims, labels)
    merged = tune_threshold(curve, 0.97, rule="local", confidence=0.0, min_band=20)
    assert merged.threshold < 0.91 and merged.recall == 1.0
    # unmerged, the 2/3 band fails on its own and forces the threshold above it
    alone = tune_threshold(curve, 0.97, rule="local", confidence=0.0, min_band=1)
    assert alone.threshold > 0.96 and alone.hits == 501  # the wrong pair is left out
    # a small leftover at the top joins the group below it
    top = [*_spread(0.95, 0.97, 1000), 0.991, 0.993, 0.995, 0.997, 0.999]
    top_labels = [True] * 1000 + [True, True, True, True, False]
    top_curve = precision_recall_curve(top, top_labels)
    assert tune_threshold(top_curve, 0.97, rule="local", confidence=0.0).threshold <= 0.951
    with pytest.raises(ValueError, match="under the local rule"):
        tune_threshold(top_curve, 0.97, rule="local", confidence=0.0, min_band=1)


def test_at_95_percent_a_perfect_band_too_small_to_prove_the_target_is_merged() -> None:
    # 60 right pairs cannot prove 0.97 at 95 % on their own (Wilson bound 0.957), so the
    # top band is merged however small min_band is, and only real errors block a threshold
    sims = _spread(0.95, 0.97, 1000) + _spread(0.98, 1.0, 60)
    labels = [True] * 1060
    curve = precision_recall_curve(sims, labels)
    assert tune_threshold(curve, 0.97, rule="local", min_band=1).threshold <= 0.951
    assert tune_threshold(curve, 0.97, rule="local") == tune_threshold(
        curve, 0.97, rule="cumulative"
    )


def test_rule_arguments_are_checked() -> None:
    curve = precision_recall_curve([0.95] * 200, [True] * 200)
    assert RULES == ("cumulative", "local")
    with pytest.raises(ValueError, match="rule"):
        tune_threshold(curve, 0.9, rule="median")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="band"):
        tune_threshold(curve, 0.9, band=0.0)
    with pytest.raises(ValueError, match="min_band"):
        tune_threshold(curve, 0.9, min_band=0)
