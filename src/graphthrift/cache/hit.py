"""What a cache serves: a ``CacheHit``, and the hit id that ``feedback`` takes back."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["CacheHit", "Layer", "parse_hit_id"]

Layer = Literal["exact", "semantic"]


@dataclass(frozen=True, slots=True)
class CacheHit:
    """A served answer and where it came from.

    ``hit_id`` identifies this reuse for ``cache.feedback(hit_id, correct)``.
    """

    layer: Layer
    entry_id: int
    answer: str
    similarity: float
    query: str
    payload: Any = None
    evidence_ids: tuple[str, ...] = ()
    model: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    tenant_id: str = ""
    namespace: str = "default"

    @property
    def hit_id(self) -> str:
        return f"{self.layer}:{self.entry_id}:{self.similarity:.6f}"


def parse_hit_id(hit: CacheHit | str) -> tuple[str, int, float]:
    """(layer, entry id, similarity) of a hit or of its ``hit_id``.

    Raises:
        ValueError: ``hit`` is a string that is not a hit id.
    """
    if isinstance(hit, CacheHit):
        return hit.layer, hit.entry_id, hit.similarity
    try:
        layer, entry, similarity = hit.split(":")
        if layer not in ("exact", "semantic"):
            raise ValueError(layer)
        return layer, int(entry), float(similarity)
    except ValueError:
        raise ValueError(f"not a cache hit id: {hit!r} (use CacheHit.hit_id)") from None
