"""When a similar entry may be served: a fixed threshold, or one learned per entry.

- ``StaticPolicy`` serves at a fixed threshold (pick it from labelled data with
  ``graphthrift.cache.tuning.tune_threshold``; re-exported here for old imports).
- ``AdaptivePolicy`` learns one threshold per cached entry from observed reuse, with an
  error bound, after the idea of vCache (Schroeder et al., arXiv 2502.03771). The
  estimator, in our words (not vCache's code, nor exactly its estimator):

  Scale. Similarities s are mapped to Fisher's z = atanh(s), which stretches the region
  near 1 where serving decisions are made; a logistic curve in z fits observed
  correctness across 0.5..1 far better than one in s (checked on banking77).

  Entry model. Reusing entry e at similarity s is right with probability
  σ(γ (z - t_e)): each entry has its own threshold t_e (where it is right half the time)
  and all entries share the slope γ. A priori t_e ~ N(μ, τ²) plus a small outlier mass
  (0.5 %, uniform over the grid up to "never right"), so that an entry whose stored
  answer is bad can be pushed out of service by its own evidence.

  Prior (empirical Bayes, shared by the namespace). All observations (s, correct), from a
  calibration split via ``observe_many`` and online from ``observe``, are pooled into one
  logistic fit σ(a + b z) (MAP under a weak prior). Averaging the entry model over the
  prior gives, by the probit approximation, σ(γ (z - μ) / √(1 + πγ²τ²/8)); matching it to
  the pooled curve gives μ = -a/b and γ = b / √(1 - f²), where f² = πb²τ²/8 is the share f
  of the pooled curve's spread that lies between entries. f is fitted by marginal
  likelihood on calibration entries observed more than once (``observe_many(...,
  entries=...)``), else 0.5. The standard error of μ (delta method on the fit's Laplace
  covariance) is added to τ, so a prior fitted on little data is wide and serves little.

  Entry posterior. An entry's own observations (kept on its row, the latest 256) update
  t_e exactly on a grid (Bayes' rule, no approximation beyond the grid), and the posterior
  predictive P(correct | s) = E[σ(γ (z - t_e)) | observations] is computed per lookup
  (about 0.05 ms cold, 0.3 ms with 50 observations). Wrong reuses push t_e up (the entry
  needs a higher similarity), right reuses pull it down.

  Decision with an error bound. δ = ``max_error`` bounds the probability that a served
  hit is wrong. Serving the candidates likeliest to be right first is the best way to
  spend that budget, so the rule is a cut on the predictive probability: serve when
  P(correct | s, observations) >= c. c is set at each refit on the pooled observations:
  the lowest predictive probability at which the mean error of all observations above it
  is still <= δ, both as the model predicts it and as observed (the latter guards against
  the logistic form being wrong, as on stsb, where no similarity is safe); never below
  0.5, and 1 - δ with no observations. Hence the expected error of served hits stays
  <= δ under the observed similarity distribution, while each served hit individually
  may be a little riskier than δ (as with a tuned threshold). ``confidence`` adds a
  stricter, per-hit requirement: the posterior probability that the entry's own
  P(correct | s) >= c must reach it.

  Learning. Each miss the cache judges (``verify`` on the fresh answer) and each
  ``feedback`` adds an observation to the entry and to the pooled prior. The pooled fit is
  refitted every ``refit_every`` observations (or 5 % of the pool) over the latest
  ``window``. The bound is as good as the model: shared slope, logistic link in z, and the
  calibration data being like the traffic; the bench reports the observed error.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from graphthrift.cache.tuning import (
    RULES,
    CurvePoint,
    Rule,
    precision_recall_curve,
    tune_threshold,
)
from graphthrift.errors import ConfigError

__all__ = [
    "RULES",
    "AdaptivePolicy",
    "CurvePoint",
    "Rule",
    "StaticPolicy",
    "ThresholdPolicy",
    "precision_recall_curve",
    "tune_threshold",
]

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
            raise ConfigError("threshold", self.threshold, "a cosine similarity in [-1, 1]")

    def serve(self, similarity: float, obs_sim: Sequence[float], obs_ok: Sequence[bool]) -> bool:
        return similarity >= self.threshold

    def observe(self, similarity: float, correct: bool) -> None:
        return None


def _sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


def _log_sigmoid(x: _FloatArray) -> _FloatArray:
    """log σ(x), stable for large |x|."""
    return np.asarray(-np.logaddexp(0.0, -x), dtype=np.float64)


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


def _fisher_z(similarity: Any) -> Any:
    """Fisher's z = atanh(s): cosine similarities near 1 are stretched apart."""
    return np.arctanh(np.clip(similarity, -_S_MAX, _S_MAX))


@dataclass(frozen=True, slots=True)
class EntryPrior:
    """The namespace prior every entry starts from (see the module docstring).

    On Fisher's z scale: ``slope`` is γ, ``location`` and ``spread`` the mean and standard
    deviation of an entry's threshold t_e (spread includes the standard error of the
    location); ``share`` is f, the fraction of the pooled curve's spread that lies between
    entries; ``level`` is c, the P(correct) a candidate needs to be served.
    """

    slope: float
    location: float
    spread: float
    share: float
    level: float
    observations: int
    log_weights: _FloatArray  # log prior mass of each point of _GRID

    @property
    def location_similarity(self) -> float:
        """The location as a cosine similarity: a new entry is right half the time here."""
        return float(np.tanh(self.location))


_S_MAX = 0.9999
_Z_CENTER = float(np.arctanh(0.9))
# an entry's threshold t_e (z scale) lives on this grid; beyond atanh(0.9999) = 4.95 means
# "never right", which the outlier mass below keeps reachable
_GRID = np.round(np.arange(0.0, 6.0001, 0.02), 6)
_KAPPA = math.pi / 8.0  # probit approximation: ∫σ(γ(z-t))N(t; μ, τ²)dt ≈ σ(γ(z-μ)/√(1+κγ²τ²))
_OUTLIER = 0.005  # prior mass of "this entry is unlike the others" (uniform over the grid)
_SHARES = (0.0, 0.2, 0.35, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)  # candidate f for the fit
_S_LEVELS = np.linspace(0.5, _S_MAX, 200)  # where the cold curve is tabulated to find c


def _entry_prior(
    theta: _FloatArray,
    hessian: _FloatArray,
    share: float,
    observed_z: _FloatArray,
    observed_ok: _FloatArray,
    max_error: float,
) -> EntryPrior:
    """Turn the pooled fit σ(a + b(z - z₀)) into the per-entry threshold prior and level."""
    a, b = float(theta[0]), max(float(theta[1]), 0.5)  # a similarity that lowers P is noise
    location = _Z_CENTER - a / b
    cov = np.asarray(np.linalg.inv(hessian), dtype=np.float64)
    grad = np.array([-1.0 / b, a / (b * b)])  # delta method for Var(location)
    location_var = max(float(grad @ cov @ grad), 0.0)
    share = min(max(share, 0.0), 0.95)
    tau = share / (b * math.sqrt(_KAPPA))  # κ b² τ² = f²: the pooled curve is kept
    slope = b / math.sqrt(1.0 - share * share)
    spread = max(math.sqrt(tau * tau + location_var), 0.01)
    u = (_GRID - location) / spread
    normal = np.exp(-0.5 * u * u)
    total = float(normal.sum())
    normal = normal / total if total > 0 else np.full(_GRID.size, 1.0 / _GRID.size)
    log_weights = np.log((1.0 - _OUTLIER) * normal + _OUTLIER / _GRID.size)
    level = 1.0 - max_error
    if observed_z.size:
        # c: serve the likeliest-right candidates first while their mean error, predicted
        # and observed, stays within δ (under the observed similarity distribution)
        cold = _predictive(slope, log_weights, _fisher_z(_S_LEVELS))
        p = np.interp(observed_z, _fisher_z(_S_LEVELS), cold)
        order = np.argsort(-p, kind="stable")
        p, wrong = p[order], 1.0 - observed_ok[order]
        count = np.arange(1, p.size + 1)
        predicted, observed = np.cumsum(1.0 - p) / count, np.cumsum(wrong) / count
        within = np.nonzero((predicted <= max_error) & (observed <= max_error))[0]
        level = max(float(p[within[-1]]), 0.5) if within.size else 1.0
    return EntryPrior(
        slope, location, spread, share, level, int(observed_z.size), np.asarray(log_weights)
    )


def _predictive(slope: float, log_post: _FloatArray, z: _FloatArray) -> _FloatArray:
    """P(correct) at each z, averaging σ(γ(z - t)) over the threshold distribution."""
    log_p = _log_sigmoid(slope * (np.atleast_1d(z)[:, None] - _GRID[None, :]))
    return np.asarray(np.exp(np.logaddexp.reduce(log_post[None, :] + log_p, axis=1)))


class AdaptivePolicy:
    """Per-entry thresholds with an error bound, learned from observed reuse (vCache-style).

    Serves a candidate when the entry's posterior predictive probability of a correct
    reuse, P(correct | s, the entry's observations), reaches the level c at which served
    hits are wrong with probability at most ``max_error`` on average; see the module
    docstring for the model.

    Args:
        max_error: δ, the largest acceptable probability that a served hit is wrong.
        confidence: optional and stricter: also require the posterior probability that
            the entry's own P(correct | s) reaches c to be at least this (e.g. 0.9).
        entry_spread: f in [0, 0.95], the share of the pooled curve's spread that lies
            between entries (how far one entry may differ from the rest); default: fitted
            by ``observe_many(..., entries=...)`` when entries repeat, else 0.5.
        min_similarity: candidates below this are never served nor learned from.
        refit_every: refit the pooled prior after this many new observations (or 5 % of
            the pool, whichever is more).
        window: the pooled prior keeps the latest ``window`` observations (drift).

    Example:
        >>> policy = AdaptivePolicy(max_error=0.05)
        >>> policy.serve(0.99, [], [])   # nothing learned yet: too uncertain to serve
        False
        >>> sims = [0.7 + 0.003 * i for i in range(100)]
        >>> policy.observe_many(sims, [s > 0.85 for s in sims])   # e.g. a calibration split
        >>> policy.serve(0.99, [], [])
        True
        >>> policy.threshold([0.93, 0.94], [False, False]) > policy.threshold()
        True
    """

    name = "adaptive"

    def __init__(
        self,
        max_error: float = 0.05,
        *,
        confidence: float | None = None,
        entry_spread: float | None = None,
        min_similarity: float = 0.5,
        refit_every: int = 25,
        window: int = 50_000,
    ) -> None:
        if not 0.0 < max_error < 0.5:
            raise ConfigError("max_error", max_error, "δ must be in (0, 0.5)")
        if confidence is not None and not 0.5 <= confidence < 1.0:
            raise ConfigError("confidence", confidence, "must be in [0.5, 1)")
        if entry_spread is not None and not 0.0 <= entry_spread <= 0.95:
            raise ConfigError("entry_spread", entry_spread, "f must be in [0, 0.95]")
        for name, value in (("refit_every", refit_every), ("window", window)):
            if value < 1:
                raise ConfigError(name, value, "must be >= 1")
        self.max_error = max_error
        self.confidence = confidence
        self.min_similarity = min_similarity
        self._fixed_share = entry_spread
        self._share = 0.5 if entry_spread is None else entry_spread
        self._refit_every = refit_every
        self._window = window
        # weak prior of the pooled fit σ(a + b(z - z₀)): even odds at s = 0.97, b = 6 ± 5
        self._base_mean = np.array([-6.0 * (float(np.arctanh(0.97)) - _Z_CENTER), 6.0])
        self._base_precision = np.diag([1 / 9.0, 1 / 25.0])
        self._lock = threading.Lock()
        self._zs: list[float] = []
        self._ys: list[float] = []
        self._since_fit = 0
        self._prior = self._make_prior(self._base_mean, self._base_precision, self._share)

    # -- learning ---------------------------------------------------------------------------

    def observe(self, similarity: float, correct: bool) -> None:
        """Add one observation to the pooled prior (refit every ``refit_every`` additions)."""
        if similarity < self.min_similarity:
            return  # far candidates say nothing about the decision region
        with self._lock:
            self._zs.append(float(_fisher_z(similarity)))
            self._ys.append(1.0 if correct else 0.0)
            self._since_fit += 1
            # refit cost grows with the pool: refit after 5 % new observations at least
            if self._since_fit >= max(self._refit_every, len(self._zs) // 20):
                self._refit()

    def observe_many(
        self,
        similarities: Sequence[float],
        correct: Sequence[bool],
        entries: Sequence[object] | None = None,
    ) -> None:
        """Warm-start from labelled reuse, e.g. a calibration split, and refit the prior.

        Args:
            similarities: the similarity of each observed reuse.
            correct: whether that reuse was right.
            entries: optional id of the entry each reuse would have served; when ids
                repeat, f (the between-entry share) is fitted by marginal likelihood
                (unless fixed by ``entry_spread``).
        """
        sims = [float(s) for s in similarities]
        oks = [bool(c) for c in correct]
        if len(sims) != len(oks) or (entries is not None and len(entries) != len(sims)):
            raise ValueError("similarities, correct and entries must have the same length")
        keep = [i for i, s in enumerate(sims) if s >= self.min_similarity]
        with self._lock:
            self._zs.extend(float(_fisher_z(sims[i])) for i in keep)
            self._ys.extend(1.0 if oks[i] else 0.0 for i in keep)
            if entries is not None and self._fixed_share is None:
                groups: dict[object, list[int]] = {}
                for i in keep:
                    groups.setdefault(entries[i], []).append(i)
                repeated = [g for g in groups.values() if len(g) > 1]
                if repeated:
                    self._share = self._fit_share(
                        [[sims[i] for i in g] for g in repeated],
                        [[oks[i] for i in g] for g in repeated],
                    )
            self._refit()

    def _fit_share(self, group_sims: list[list[float]], group_oks: list[list[bool]]) -> float:
        """The f under which the repeated entries' observations are most likely.

        Singletons carry no information about f (the pooled curve pins their marginal), so
        only entries observed more than once enter this marginal likelihood.
        """
        theta, hessian = self._fit()
        best, best_ll = self._share, -math.inf
        for share in _SHARES:
            prior = self._make_prior(theta, hessian, share, with_level=False)
            ll = 0.0
            for sims, oks in zip(group_sims, group_oks, strict=True):
                log_post = prior.log_weights + _entry_log_likelihood(prior.slope, sims, oks)
                ll += float(np.logaddexp.reduce(log_post))
            if ll > best_ll:
                best, best_ll = share, ll
        return best

    def _fit(self) -> tuple[_FloatArray, _FloatArray]:
        if not self._zs:
            return self._base_mean.copy(), self._base_precision.copy()
        return _fit_logistic(
            np.asarray(self._zs) - _Z_CENTER,
            np.asarray(self._ys),
            self._base_mean,
            self._base_precision,
        )

    def _make_prior(
        self, theta: _FloatArray, hessian: _FloatArray, share: float, with_level: bool = True
    ) -> EntryPrior:
        zs = np.asarray(self._zs if with_level else (), dtype=np.float64)
        ys = np.asarray(self._ys if with_level else (), dtype=np.float64)
        return _entry_prior(theta, hessian, share, zs, ys, self.max_error)

    def _refit(self) -> None:
        self._since_fit = 0
        if len(self._zs) > self._window:
            del self._zs[: -self._window], self._ys[: -self._window]
        theta, hessian = self._fit()
        self._prior = self._make_prior(theta, hessian, self._share)

    @property
    def prior(self) -> EntryPrior:
        """The current namespace prior (as of the last refit)."""
        with self._lock:
            return self._prior

    def refit(self) -> EntryPrior:
        """Refit the prior on every observation so far and return it."""
        with self._lock:
            self._refit()
            return self._prior

    @property
    def pooled(self) -> tuple[float, float, int]:
        """(similarity at which a new entry is right half the time, slope γ, observations)."""
        prior = self.prior
        return prior.location_similarity, prior.slope, prior.observations

    # -- deciding ---------------------------------------------------------------------------

    def p_correct(
        self, similarity: float, obs_sim: Sequence[float] = (), obs_ok: Sequence[bool] = ()
    ) -> float:
        """Posterior predictive P(a reuse at ``similarity`` is right) for one entry."""
        prior = self.prior
        log_post = prior.log_weights + _entry_log_likelihood(prior.slope, obs_sim, obs_ok)
        log_post = log_post - np.logaddexp.reduce(log_post)
        return float(_predictive(prior.slope, log_post, _fisher_z(similarity))[0])

    def serve(self, similarity: float, obs_sim: Sequence[float], obs_ok: Sequence[bool]) -> bool:
        if similarity < self.min_similarity:
            return False
        prior = self.prior
        log_post = prior.log_weights + _entry_log_likelihood(prior.slope, obs_sim, obs_ok)
        log_post = log_post - np.logaddexp.reduce(log_post)
        z = _fisher_z(similarity)
        if float(_predictive(prior.slope, log_post, z)[0]) < prior.level:
            return False
        if self.confidence is None:
            return True
        safe = _log_sigmoid(prior.slope * (z - _GRID)) >= math.log(prior.level)
        return float(np.exp(log_post)[safe].sum()) >= self.confidence

    def threshold(self, obs_sim: Sequence[float] = (), obs_ok: Sequence[bool] = ()) -> float:
        """The entry's learned threshold: the lowest similarity it would be served at
        (``inf``: not even at similarity 1)."""
        lo, hi = self.min_similarity, 1.0
        if not self.serve(hi, obs_sim, obs_ok):
            return math.inf
        for _ in range(24):
            mid = (lo + hi) / 2
            if self.serve(mid, obs_sim, obs_ok):
                hi = mid
            else:
                lo = mid
        return hi


def _entry_log_likelihood(
    slope: float, obs_sim: Sequence[float], obs_ok: Sequence[bool]
) -> _FloatArray:
    """log P(an entry's observations | t_e) at each point of _GRID."""
    if not len(obs_sim):
        return np.zeros(_GRID.size)
    z = _fisher_z(np.asarray(obs_sim, dtype=np.float64))
    sign = np.where(np.asarray(obs_ok, dtype=bool), 1.0, -1.0)
    return np.asarray(
        _log_sigmoid(slope * (z[:, None] - _GRID[None, :]) * sign[:, None]).sum(axis=0)
    )
