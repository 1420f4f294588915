"""AdaptivePolicy on synthetic reuse streams: per-entry thresholds move the right way, the
between-entry share is recovered, and the observed error of served hits respects δ."""

from __future__ import annotations

import numpy as np
import pytest

from graphthrift.cache import AdaptivePolicy

MU = float(np.arctanh(0.85))  # entries are right half the time at s = 0.85 on average
SLOPE = 12.0  # per unit of Fisher z


def _stream(
    rng: np.random.Generator, n_entries: int, n_queries: int, spread: float
) -> tuple[list[float], list[bool], list[int]]:
    """Reuse events drawn from the model: entry e is right at s with σ(γ(atanh s - t_e))."""
    thresholds = rng.normal(MU, spread, n_entries)
    entry = rng.integers(0, n_entries, n_queries)
    z = rng.uniform(np.arctanh(0.6), np.arctanh(0.995), n_queries)
    p = 1.0 / (1.0 + np.exp(-SLOPE * (z - thresholds[entry])))
    correct = rng.random(n_queries) < p
    return np.tanh(z).tolist(), correct.tolist(), entry.tolist()


def _calibrated(max_error: float, spread: float, seed: int = 1) -> AdaptivePolicy:
    policy = AdaptivePolicy(max_error=max_error)
    sims, correct, entries = _stream(np.random.default_rng(seed), 300, 1500, spread)
    policy.observe_many(sims, correct, entries=entries)
    return policy


def _replay(policy: AdaptivePolicy, seed: int, spread: float) -> tuple[float, float]:
    """Serve a fresh stream in order, judging every candidate; (hit rate, error of hits)."""
    sims, correct, entries = _stream(np.random.default_rng(seed), 200, 1500, spread)
    seen: dict[int, tuple[list[float], list[bool]]] = {}
    served = wrong = 0
    for s, ok, e in zip(sims, correct, entries, strict=True):
        obs_sim, obs_ok = seen.setdefault(e, ([], []))
        if policy.serve(s, obs_sim, obs_ok):
            served += 1
            wrong += not ok
        obs_sim.append(s)
        obs_ok.append(ok)
        policy.observe(s, ok)
    return served / len(sims), wrong / max(served, 1)


def test_cold_policy_serves_nothing_short_of_identical_questions() -> None:
    policy = AdaptivePolicy(max_error=0.05)
    assert policy.prior.level == pytest.approx(0.95)
    assert not policy.serve(0.99, [], [])
    assert not policy.serve(0.4, [], [])  # below min_similarity: never


def test_learned_threshold_rises_with_wrong_reuses_and_falls_with_right_ones() -> None:
    policy = _calibrated(0.05, spread=0.3)
    cold = policy.threshold()
    assert 0.8 < cold < 0.97
    wrong = policy.threshold([cold + 0.01, cold + 0.02], [False, False])
    right = policy.threshold([cold - 0.02] * 4, [True] * 4)
    assert wrong > cold + 0.02  # the entry now needs more than the similarities it failed at
    assert right < cold - 0.01
    # more evidence moves it further, and the posterior predictive agrees
    assert policy.threshold([cold + 0.01] * 6, [False] * 6) >= wrong
    s = cold + 0.005
    assert (
        policy.p_correct(s, [s] * 3, [False] * 3)
        < policy.p_correct(s)
        < policy.p_correct(s, [s] * 3, [True] * 3)
    )


def test_an_entry_with_a_bad_answer_is_taken_out_of_service() -> None:
    policy = _calibrated(0.05, spread=0.3)
    obs_sim: list[float] = []
    obs_ok: list[bool] = []
    served = 0
    for _ in range(30):  # every reuse of this entry is wrong, even at s = 0.98
        if policy.serve(0.98, obs_sim, obs_ok):
            served += 1
        obs_sim.append(0.98)
        obs_ok.append(False)
    assert served <= 2
    assert policy.threshold(obs_sim, obs_ok) > 0.999  # only for (near-)identical questions


def test_between_entry_share_is_fitted_from_repeated_entries() -> None:
    assert _calibrated(0.05, spread=0.02).prior.share <= 0.35
    assert _calibrated(0.05, spread=0.3).prior.share >= 0.7
    assert AdaptivePolicy(0.05, entry_spread=0.2).prior.share == 0.2


@pytest.mark.parametrize("max_error", [0.05, 0.02])
@pytest.mark.parametrize("spread", [0.02, 0.3])
def test_observed_error_of_served_hits_respects_the_bound(max_error: float, spread: float) -> None:
    policy = _calibrated(max_error, spread)
    hit_rate, error = _replay(policy, seed=2, spread=spread)
    assert hit_rate > 0.4  # it serves, ...
    assert error <= max_error + 0.01  # ... and its served hits are wrong at most ~δ


def test_per_entry_thresholds_beat_one_threshold_when_entries_differ() -> None:
    """At the same observed error, the adaptive policy serves more than the best single
    threshold chosen with hindsight on the same stream."""
    spread = 0.3
    policy = _calibrated(0.02, spread)
    hit_rate, error = _replay(policy, seed=2, spread=spread)
    sims, correct, _ = _stream(np.random.default_rng(2), 200, 1500, spread)
    order = np.argsort(sims)[::-1]
    wrong = np.cumsum(~np.asarray(correct)[order]) / np.arange(1, len(sims) + 1)
    best_static = (np.nonzero(wrong <= error)[0].max() + 1) / len(sims)
    assert hit_rate > best_static + 0.03


def test_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="max_error"):
        AdaptivePolicy(max_error=0.6)
    with pytest.raises(ValueError, match="confidence"):
        AdaptivePolicy(confidence=0.2)
    with pytest.raises(ValueError, match="entry_spread"):
        AdaptivePolicy(entry_spread=1.5)
    with pytest.raises(ValueError, match="same length"):
        AdaptivePolicy().observe_many([0.9, 0.8], [True])


def test_confidence_only_makes_the_policy_stricter() -> None:
    loose, strict = _calibrated(0.05, 0.3), AdaptivePolicy(max_error=0.05, confidence=0.9)
    sims, correct, entries = _stream(np.random.default_rng(1), 300, 1500, 0.3)
    strict.observe_many(sims, correct, entries=entries)
    assert strict.threshold() >= loose.threshold()
    assert strict.threshold([0.9] * 3, [True] * 3) >= loose.threshold([0.9] * 3, [True] * 3)
