"""``DifficultyClassifier``: logistic regression on an embedding plus the fast features."""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from graphthrift.errors import ConfigError
from graphthrift.route.features import FEATURE_NAMES, difficulty_features

__all__ = ["DifficultyClassifier"]

# -- classifier ------------------------------------------------------------------------------


_ROUTING_EMBEDDERS: dict[int, Any] = {}
_ROUTING_LOCK = threading.Lock()


def _routing_embedder(max_length: int) -> Any:
    """The process-wide embedder for routing: MiniLM distilled to static token vectors.

    A MiniLM pass over a 40-token window costs p95 about 8 ms on an idle 2-core machine, more
    than the router's 5 ms allowance; the distilled `StaticEmbedder` costs well under a
    millisecond once its tokens are known, for the same routing quality on the route bench.
    """
    with _ROUTING_LOCK:
        embedder = _ROUTING_EMBEDDERS.get(max_length)
        if embedder is None:
            from graphthrift.embed.static import StaticEmbedder

            embedder = StaticEmbedder(max_length=max_length)
            _ROUTING_EMBEDDERS[max_length] = embedder
        return embedder


class DifficultyClassifier:
    """Logistic regression (numpy) on the embedder's vector plus the fast features.

    Chosen over nearest-centroid because it gives calibrated probabilities, which the
    router's threshold needs, and over scikit-learn because it adds no dependency; training
    on a few thousand examples takes well under a second.

    The per-request cost is one embedding of a short, fixed window: the last
    ``embed_chars`` characters of the request (``Router`` passes the last user message),
    at most ``embed_tokens`` tokens with the default embedder, so a long prompt costs no
    more than a short one. Embeddings of identical windows are kept in a small LRU
    (``cache_size``), and the standardisation is folded into the weights once.

    Args:
        embedder: any ``graphthrift.embed.embedders.Embedder`` (default: a ``StaticEmbedder``
            distilled from MiniLM, ``max_length=embed_tokens``, shared in the process).
        l2: weight decay.
        embed_chars: only the last ``embed_chars`` characters are embedded (the fast
            features still see the whole text).
        embed_tokens: the default embedder's token limit (ignored for a given embedder).
        cache_size: embeddings kept for repeated windows; 0 disables the cache.
    """

    def __init__(
        self,
        embedder: Any = None,
        *,
        l2: float = 1e-3,
        embed_chars: int = 160,
        embed_tokens: int = 40,
        cache_size: int = 1024,
    ) -> None:
        if embed_chars < 1 or embed_tokens < 1 or cache_size < 0:
            raise ConfigError(
                "DifficultyClassifier(embed_chars, embed_tokens, cache_size)",
                (embed_chars, embed_tokens, cache_size),
                "needs embed_chars >= 1, embed_tokens >= 1 and cache_size >= 0",
            )
        self.embedder = embedder if embedder is not None else _routing_embedder(embed_tokens)
        self.l2 = l2
        self.embed_chars = embed_chars
        self.embed_tokens = embed_tokens
        self.cache_size = cache_size
        self.weights: npt.NDArray[np.float64] | None = None
        self.bias = 0.0
        self._mean: npt.NDArray[np.float64] | None = None
        self._scale: npt.NDArray[np.float64] | None = None
        # weights and bias with the standardisation folded in: p = sigmoid(x @ w + b)
        self._w: npt.NDArray[np.float64] | None = None
        self._b = 0.0
        self._dim = 0
        self._cache: OrderedDict[str, npt.NDArray[np.float64]] = OrderedDict()
        self._cache_lock = threading.Lock()

    def _window(self, text: str) -> str:
        return text[-self.embed_chars :]

    def _embed(self, windows: Sequence[str]) -> npt.NDArray[np.float64]:
        return np.asarray(self.embedder.embed(list(windows)), dtype=np.float64)

    def _vector(self, text: str) -> npt.NDArray[np.float64]:
        """The embedding of ``text``'s window, from the LRU when the window was seen."""
        window = self._window(text)
        if self.cache_size:
            with self._cache_lock:
                hit = self._cache.get(window)
                if hit is not None:
                    self._cache.move_to_end(window)
                    return hit
        vector: npt.NDArray[np.float64] = self._embed([window])[0]
        if self.cache_size:
            vector.setflags(write=False)
            with self._cache_lock:
                self._cache[window] = vector
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        return vector

    def cache_clear(self) -> None:
        """Forget the cached embeddings."""
        with self._cache_lock:
            self._cache.clear()

    def _matrix(self, texts: Sequence[str]) -> npt.NDArray[np.float64]:
        vectors = self._embed([self._window(t) for t in texts])
        feats = np.array([difficulty_features(t) for t in texts], dtype=np.float64)
        return np.hstack([vectors, feats])

    def _compile(self) -> None:
        assert self.weights is not None and self._mean is not None and self._scale is not None
        self._w = self.weights / self._scale
        self._b = float(self.bias - (self._mean / self._scale) @ self.weights)
        self._dim = len(self.weights) - len(FEATURE_NAMES)

    def fit(
        self,
        texts: Sequence[str],
        labels: Sequence[int | bool],
        *,
        epochs: int = 400,
        lr: float = 0.5,
    ) -> DifficultyClassifier:
        """Train on texts labelled 1 (needs the strong model) or 0 (the cheap one is enough)."""
        if len(texts) != len(labels) or not texts:
            raise ValueError(f"fit needs as many labels as texts, got {len(texts)}/{len(labels)}")
        y = np.array([1.0 if label else 0.0 for label in labels])
        if y.min() == y.max():
            raise ValueError("fit needs examples of both classes (0 = cheap, 1 = strong)")
        x = self._matrix(texts)
        self._mean = x.mean(axis=0)
        self._scale = x.std(axis=0) + 1e-6
        x = (x - self._mean) / self._scale
        w = np.zeros(x.shape[1])
        b = 0.0
        pos_weight = (1 - y.mean()) / y.mean()  # balance the classes
        sample_w = np.where(y == 1, pos_weight, 1.0)
        sample_w = sample_w / sample_w.mean()
        for _ in range(epochs):
            p = 1.0 / (1.0 + np.exp(-(x @ w + b)))
            grad = (p - y) * sample_w
            w -= lr * (x.T @ grad / len(y) + self.l2 * w)
            b -= lr * float(grad.mean())
        self.weights, self.bias = w, b
        self._compile()
        return self

    def _trained(self) -> npt.NDArray[np.float64]:
        if self._w is None:
            raise RuntimeError("DifficultyClassifier is not trained; call fit() or load()")
        return self._w

    def predict_proba(self, texts: Sequence[str]) -> npt.NDArray[np.float64]:
        """P(needs the strong model) for each text."""
        w = self._trained()
        if len(texts) == 1:
            return np.array([self.predict_one(texts[0])])
        x = self._matrix(texts)
        out: npt.NDArray[np.float64] = 1.0 / (1.0 + np.exp(-(x @ w + self._b)))
        return out

    def predict_one(self, text: str, *, has_tools: bool = False) -> float:
        """P(needs the strong model) for one text: the router's per-request path."""
        w = self._trained()
        score = float(self._vector(text) @ w[: self._dim]) + self._b
        feats = difficulty_features(text, has_tools=has_tools)
        score += sum(wi * fi for wi, fi in zip(w[self._dim :].tolist(), feats, strict=True))
        return 1.0 / (1.0 + math.exp(-score))

    def save(self, path: str | Path) -> None:
        """Write the weights (``.npz``), with the embedder's id for a later check."""
        if self.weights is None or self._mean is None or self._scale is None:
            raise RuntimeError("nothing to save: the classifier is not trained")
        np.savez(
            Path(path),
            weights=self.weights,
            bias=np.array([self.bias]),
            mean=self._mean,
            scale=self._scale,
            model_id=np.array([str(getattr(self.embedder, "model_id", ""))]),
            window=np.array([self.embed_chars, self.embed_tokens]),
        )

    @classmethod
    def load(cls, path: str | Path, embedder: Any = None) -> DifficultyClassifier:
        """Read weights written by ``save``; the embedder must be the one they were fit with."""
        data = np.load(Path(path))
        window = data["window"] if "window" in data.files else np.array([256, 256])
        clf = cls(embedder, embed_chars=int(window[0]), embed_tokens=int(window[1]))
        saved = str(data["model_id"][0])
        current = str(getattr(clf.embedder, "model_id", ""))
        if saved and current and saved != current:
            raise ValueError(f"classifier was trained with embedder {saved!r}, got {current!r}")
        clf.weights, clf.bias = data["weights"], float(data["bias"][0])
        clf._mean, clf._scale = data["mean"], data["scale"]
        clf._compile()
        return clf


# -- calls made inside a cascade -------------------------------------------------------------
