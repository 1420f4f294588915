"""A static sentence embedder distilled from MiniLM: a vector in microseconds, not milliseconds.

The router's classifier runs on every request, so its embedding must cost far less than the
model call it routes; a transformer pass over even 40 tokens is several milliseconds on two
cores. Following Model2Vec (Tulkens and van Dongen, 2024), each vocabulary token gets one
fixed vector, MiniLM's own output for that token alone, and a text is the mean of its
tokens' vectors. Vectors are distilled lazily, in one batched model call for the tokens a
text brings that were never seen, so nothing is downloaded or written to disk and the first
texts pay only for their own new tokens.

Example:
    >>> StaticEmbedder().embed(["How do I reset my password?"]).shape
    (1, 384)
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

import numpy as np

from graphthrift.embed.embedders import MiniLMEmbedder, Vectors, normalise_rows

__all__ = ["StaticEmbedder"]


class StaticEmbedder:
    """Mean of per-token vectors distilled from a `MiniLMEmbedder`; thread-safe.

    Word order and context are lost, so it is weaker than the transformer for semantic
    caching; it is meant for features such as the router's difficulty classifier, where a
    linear model on top recovers what matters.

    The table holds only tokens seen so far: 1.5 KB each, 47 MB if every one of MiniLM's
    30,522 tokens is seen.

    Args:
        source: the MiniLM whose token outputs are distilled (default: a private one).
        max_length: tokens kept per text.
    """

    model_id = "all-MiniLM-L6-v2-onnx-int8-static"
    dim = MiniLMEmbedder.dim

    def __init__(self, source: MiniLMEmbedder | None = None, *, max_length: int = 256) -> None:
        self.source = source if source is not None else MiniLMEmbedder(max_length=max_length)
        self._lock = threading.Lock()
        self._table: dict[int, Vectors] = {}

    def load(self) -> None:
        """Load the source model now (``MiniLMEmbedder.load``)."""
        self.source.load()

    @property
    def distilled(self) -> int:
        """How many vocabulary tokens have a vector so far."""
        return len(self._table)

    def embed(self, texts: Sequence[str]) -> Vectors:
        """Unit-length mean token vectors; a text without tokens gives a zero row."""
        ids = self.source.token_ids(texts)  # checks the texts
        self._distil({i for row in ids for i in row})
        table = self._table
        out = np.zeros((len(ids), self.dim), dtype=np.float32)
        for k, row in enumerate(ids):
            if row:
                out[k] = np.mean([table[i] for i in row], axis=0)
        return normalise_rows(out)

    async def aembed(self, texts: Sequence[str]) -> Vectors:
        """Same as `embed`, off the event loop."""
        return await asyncio.to_thread(self.embed, texts)

    def _distil(self, ids: set[int]) -> None:
        missing = [i for i in ids if i not in self._table]
        if not missing:
            return
        with self._lock:
            missing = sorted(i for i in missing if i not in self._table)
            if missing:
                for i, vector in zip(missing, self.source.token_vectors(missing), strict=True):
                    self._table[i] = vector
