"""Text embedders: MiniLM (ONNX, int8) and its static per-token distillation."""

from __future__ import annotations

from typing import TYPE_CHECKING

from graphthrift._lazy import lazy_getattr

_EXPORTS = {
    "CallableEmbedder": ".embedders",
    "Embedder": ".embedders",
    "EmbeddingShapeError": ".embedders",
    "MiniLMEmbedder": ".embedders",
    "StaticEmbedder": ".static",
    "as_embedder": ".embedders",
    "bound_text": ".embedders",
    "default_embedder": ".embedders",
    "normalise_rows": ".embedders",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_getattr(__name__, _EXPORTS)

if TYPE_CHECKING:  # pragma: no cover
    from .embedders import CallableEmbedder as CallableEmbedder
    from .embedders import Embedder as Embedder
    from .embedders import EmbeddingShapeError as EmbeddingShapeError
    from .embedders import MiniLMEmbedder as MiniLMEmbedder
    from .embedders import as_embedder as as_embedder
    from .embedders import bound_text as bound_text
    from .embedders import default_embedder as default_embedder
    from .embedders import normalise_rows as normalise_rows
    from .static import StaticEmbedder as StaticEmbedder
