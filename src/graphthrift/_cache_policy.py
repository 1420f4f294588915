"""When a similar entry may be served: a fixed threshold, a tuned one, or a learned one.

- ``precision_recall_curve`` and ``tune_threshold`` pick a threshold from labelled data:
  the lowest similarity at which served hits reach the target precision.
- ``AdaptivePolicy`` learns one decision rule per cached entry from observed reuse, after
  the idea of vCache (Schroeder et al., arXiv 2502.03771). Our estimator, in our words:

  For each entry we model P(reusing it is correct | similarity s) = sigmoid(a + b·(s - 0.9)).
  All observations of the namespace are pooled into one fit (a MAP estimate with a weak
  prior centred on "50 % correct at s = 0.95"); that fit, with its Laplace covariance plus
  a between-entry variance, is the prior of every entry. An entry's own observations
  update it by a few Newton steps (MAP, Laplace approximation again). A hit is served only
  when the one-sided lower confidence bound of P(correct | s), at level ``confidence``, is at
  least ``1 - max_error``. With few observations the bound is wide, so the policy misses
  (and learns from the caller's verdict on the fresh answer) rather than guessing.

  This is an approximation of a hierarchical logistic model, not vCache's exact
  estimator; the guarantee is as good as the logistic form and the Laplace bound are.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

__all__ = [
    "AdaptivePolicy",
    "CurvePoint",
    "StaticPolicy",
    "ThresholdPolicy",
    "precision_recall_curve",
    "tune_threshold",
]

_CENTER = 0.9
_FloatArray = npt.NDArray[np.float64]


class ThresholdPolicy(Protocol):
    """Decides whether a candidate at ``similarity`` may be served."""

    name: str

    def serve(self, similarity: float, obs_sim: Sequence[float], obs_ok: Sequence[bool]) -> bool:
        """Whether to serve; ``obs_*`` are the entry's recorded observations."""
        ...

    def observe(self, similarity: float, correct: bool) -> None:
        """Learn from one observed reuse (pooled across entries)."""
        ...


@dataclass(slots=True)
class StaticPolicy:
    """Serve whenever similarity >= ``threshold``."""

    threshold: float
    name: str = "static"

    def __post_init__(self) -> None:
        if not -1.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold is a cosine similarity in [-1, 1], got {self.threshold}")

    def serve(self, similarity: float, obs_sim: Sequence[float], obs_ok: Sequence[bool]) -> bool:
        return similarity >= self.threshold

    def observe(self, similarity: float, correct: bool) -> None:
        return None


def _sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


def _fit_logistic(
    x: _FloatArray,
    y: _FloatArray,
    prior_mean: _FloatArray,
    prior_precision: _FloatArray,
    iterations: int = 25,
) -> tuple[_FloatArray, _FloatArray]:
    """MAP of sigmoid(a + b x) under a Gaussian prior; returns (params, posterior precision)."""
    theta = prior_mean.copy()
    design = np.stack([np.ones_like(x), x], axis=1)
    hessian = prior_precision.copy()
    for _ in range(iterations):
        eta = np.clip(design @ theta, -30.0, 30.0)
        p = 1.0 / (1.0 + np.exp(-eta))
        grad = design.T @ (p - y) + prior_precision @ (theta - prior_mean)
        weights = p * (1.0 - p)
        hessian = (design * weights[:, None]).T @ design + prior_precision
        step = np.linalg.solve(hessian, grad)
        scale = float(np.abs(step).max())
        if scale > 5.0:  # damped Newton: saturated sigmoids make raw steps overshoot
            step = step * (5.0 / scale)
        theta = theta - step
        if float(np.abs(step).max()) < 1e-6:
            break
    eta = np.clip(design @ theta, -30.0, 30.0)
    p = 1.0 / (1.0 + np.exp(-eta))
    hessian = (design * (p * (1.0 - p))[:, None]).T @ design + prior_precision
    return theta, hessian


class AdaptivePolicy:
    """Per-entry thresholds with an error bound, learned from observed reuse (vCache-style).

    Args:
        max_error: δ, the largest acceptable probability that a served hit is wrong.
        confidence: level of the one-sided lower bound on P(correct | s) (default 0.95).
        entry_variance: prior variance of an entry's (a, b) around the pooled fit; larger
            lets entries diverge from the namespace faster.
        min_similarity: candidates below this are never served nor learned from.

    Example:
        >>> policy = AdaptivePolicy(max_error=0.05)
        >>> policy.serve(0.99, [], [])   # nothing learned yet: too uncertain to serve
        False
    """

    name = "adaptive"

    def __init__(
        self,
        max_error: float = 0.05,
        *,
        confidence: float = 0.95,
        entry_variance: tuple[float, float] = (0.1, 10.0),
        min_similarity: float = 0.7,
        refit_every: int = 25,
    ) -> None:
        if not 0.0 < max_error < 1.0:
            raise ValueError(f"max_error (δ) must be in (0, 1), got {max_error}")
        if not 0.5 <= confidence < 1.0:
            raise ValueError(f"confidence must be in [0.5, 1), got {confidence}")
        self.max_error = max_error
        self.confidence = confidence
        self.min_similarity = min_similarity
        self._z = _normal_quantile(confidence)
        self._entry_var = np.diag(np.asarray(entry_variance, dtype=np.float64))
        self._refit_every = refit_every
        # weak prior for the pooled fit: P(correct) = 0.5 at s = 0.95, slope 30
        self._base_mean = np.array([-1.5, 30.0])
        self._base_precision = np.diag([1 / 4.0, 1 / 400.0])
        self._lock = threading.Lock()
        self._xs: list[float] = []
        self._ys: list[float] = []
        self._since_fit = 0
        self._pool_mean = self._base_mean.copy()
        self._pool_cov = np.linalg.inv(self._base_precision)

    # -- learning ---------------------------------------------------------------------------

    def observe(self, similarity: float, correct: bool) -> None:
        """Add one observation to the pooled prior (refit every ``refit_every`` additions)."""
        if similarity < self.min_similarity:
            return  # far candidates say nothing about the decision region
        with self._lock:
            self._xs.append(float(similarity) - _CENTER)
            self._ys.append(1.0 if correct else 0.0)
            self._since_fit += 1
            if self._since_fit >= self._refit_every:
                self._refit()

    def observe_many(self, similarities: Sequence[float], correct: Sequence[bool]) -> None:
        """Add many pooled observations at once and refit."""
        kept = [
            (s, c) for s, c in zip(similarities, correct, strict=True) if s >= self.min_similarity
        ]
        with self._lock:
            self._xs.extend(float(s) - _CENTER for s, _ in kept)
            self._ys.extend(1.0 if c else 0.0 for _, c in kept)
            self._refit()

    def _refit(self) -> None:
        self._since_fit = 0
        if not self._xs:
            return
        theta, hessian = _fit_logistic(
            np.asarray(self._xs), np.asarray(self._ys), self._base_mean, self._base_precision
        )
        self._pool_mean, self._pool_cov = (
            theta,
            np.asarray(np.linalg.inv(hessian), dtype=np.float64),
        )

    @property
    def pooled(self) -> tuple[float, float, int]:
        """The pooled fit: (a, b, observations); P(correct|s) = sigmoid(a + b (s - 0.9))."""
        with self._lock:
            if self._since_fit:
                self._refit()
            return float(self._pool_mean[0]), float(self._pool_mean[1]), len(self._xs)

    # -- deciding ---------------------------------------------------------------------------

    def lower_bound(
        self, similarity: float, obs_sim: Sequence[float] = (), obs_ok: Sequence[bool] = ()
    ) -> float:
        """The lower confidence bound of P(correct | similarity) for an entry."""
        with self._lock:
            if self._since_fit:
                self._refit()
            mean, cov = self._pool_mean, self._pool_cov + self._entry_var
        precision = np.asarray(np.linalg.inv(cov), dtype=np.float64)
        if len(obs_sim):
            x = np.asarray(obs_sim, dtype=np.float64) - _CENTER
            y = np.asarray([1.0 if o else 0.0 for o in obs_ok], dtype=np.float64)
            mean, precision = _fit_logistic(x, y, mean, precision)
        point = np.array([1.0, similarity - _CENTER])
        eta = float(point @ mean)
        var = float(point @ np.linalg.solve(precision, point))
        return _sigmoid(eta - self._z * math.sqrt(max(var, 0.0)))

    def serve(self, similarity: float, obs_sim: Sequence[float], obs_ok: Sequence[bool]) -> bool:
        if similarity < self.min_similarity:
            return False
        return self.lower_bound(similarity, obs_sim, obs_ok) >= 1.0 - self.max_error


def _normal_quantile(p: float) -> float:
    """Φ⁻¹(p) by bisection on erf (p in [0.5, 1))."""
    lo, hi = 0.0, 10.0
    for _ in range(80):
        mid = (lo + hi) / 2
        if 0.5 * (1 + math.erf(mid / math.sqrt(2))) < p:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


@dataclass(frozen=True, slots=True)
class CurvePoint:
    """Precision, recall and hit rate of serving at ``threshold``."""

    threshold: float
    precision: float
    recall: float
    hit_rate: float
    hits: int

    def as_dict(self) -> dict[str, float]:
        return {
            "threshold": round(self.threshold, 4),
            "precision": round(self.precision, 4),
            "recall": round(self.recall, 4),
            "hit_rate": round(self.hit_rate, 4),
        }


def precision_recall_curve(
    similarities: Sequence[float] | npt.NDArray[Any],
    correct: Sequence[bool] | npt.NDArray[Any],
    *,
    answerable: int | None = None,
    thresholds: Sequence[float] | None = None,
) -> list[CurvePoint]:
    """Precision/recall/hit rate of "serve when similarity >= t", for each threshold t.

    Args:
        similarities: one score per query (a pair's similarity, or a query's nearest entry).
        correct: whether serving that query would be right (pair label, or same meaning).
        answerable: queries that had a right answer available (recall's denominator);
            defaults to the number of correct ones, as for labelled pairs.
        thresholds: defaults to 0.50, 0.51, ..., 1.00 plus every distinct score above 0.5.
    """
    sims = np.asarray(similarities, dtype=np.float64)
    ok = np.asarray(correct, dtype=bool)
    if sims.shape != ok.shape:
        raise ValueError(f"got {sims.size} similarities but {ok.size} labels")
    n = sims.size
    positives = int(ok.sum()) if answerable is None else answerable
    if thresholds is None:
        grid = set(np.round(np.arange(0.5, 1.0001, 0.01), 4).tolist())
        grid |= {round(float(s), 6) for s in sims if s >= 0.5}
        thresholds = sorted(grid)
    order = np.argsort(-sims)
    sorted_sims, sorted_ok = sims[order], ok[order]
    cum_ok = np.concatenate([[0], np.cumsum(sorted_ok)])
    points = []
    for t in thresholds:
        hits = int(np.searchsorted(-sorted_sims, -t, side="right"))
        good = int(cum_ok[hits])
        points.append(
            CurvePoint(
                threshold=float(t),
                precision=good / hits if hits else 1.0,
                recall=good / positives if positives else 0.0,
                hit_rate=hits / n if n else 0.0,
                hits=hits,
            )
        )
    return points


def _wilson_lower(good: int, n: int, z: float) -> float:
    if n == 0:
        return 0.0
    p = good / n
    denom = 1 + z * z / n
    centre = p + z * z / (2 * n)
    margin = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (centre - margin) / denom


def tune_threshold(
    curve: Sequence[CurvePoint], target_precision: float, *, confidence: float = 0.0
) -> CurvePoint:
    """The lowest threshold whose precision meets ``target_precision``.

    With ``confidence`` > 0, precision must meet the target at that confidence (the
    Wilson lower bound over the hits at that threshold), which carries better to new data.

    Raises:
        ValueError: no threshold on the curve reaches the target; the message says the best.
    """
    if not 0.0 < target_precision <= 1.0:
        raise ValueError(f"target precision must be in (0, 1], got {target_precision}")
    z = _normal_quantile(confidence) if confidence >= 0.5 else 0.0
    ok = []
    for point in curve:
        good = round(point.precision * point.hits)
        score = _wilson_lower(good, point.hits, z) if z else point.precision
        if point.hits and score >= target_precision:
            ok.append(point)
    if not ok:
        best = max(curve, key=lambda p: (p.precision, p.hits), default=None)
        raise ValueError(
            f"no threshold reaches precision {target_precision}"
            + (f" (best: {best.precision:.3f} at {best.threshold:.3f})" if best else "")
            + "; lower the target or add labelled pairs"
        )
    return min(ok, key=lambda p: p.threshold)
