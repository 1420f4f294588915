"""``compress_context``: a LangGraph node that shrinks retrieved documents before the model.

A thin translation over a ``graphthrift.compress.compressor.Compressor``: documents and the question
out of the state, the core's query-aware compression, the kept documents back in. Each
compression writes what it removed to the ledger (``kind="compression"``), tagged with
the run's ``tenant_id``/``feature``/... metadata, the node name and the thread id.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated, Any

from langchain_core.documents import Document
from langchain_core.runnables import RunnableConfig, RunnableLambda
from typing_extensions import TypedDict  # LangGraph's own states (MessagesState) use it

from graphthrift.compress.compressor import build_compressor
from graphthrift.compress.result import CompressionResult, Compressor
from graphthrift.compress.savings import book_savings, drop_savings
from graphthrift.compress.savings import defer_saving as defer_saving_of
from graphthrift.kernel import read_state, run_tags
from graphthrift.ledger.records import TAG_FIELDS, LedgerRecord
from graphthrift.text.messages import to_messages

__all__ = [
    "CompressState",
    "compress_context",
    "config_tags",
    "resolve_compression_savings",
]


def _pending(old: list[str] | None, new: list[str] | None) -> list[str]:
    """Reducer of ``compression_pending``: writes add keys, a ``None`` write clears them."""
    return [] if new is None else [*(old or []), *new]


class CompressState(TypedDict):
    """The state ``compress_context`` reads and writes by default; extend it.

    ``question`` is a str (or read the question from ``messages`` with
    ``question_key="messages"``); ``documents`` are the retrieved documents, replaced by
    the kept ones. ``compression_pending`` holds the savings of ``defer_saving=True``
    compressions until the model call they shrank (``budget_guard``'s settle or
    ``route_model`` books them at the model called; a cached answer drops them). A node
    given a state without its keys raises ``StateSchemaError``.
    """

    question: str
    documents: list[Any]
    compression_pending: Annotated[list[str], _pending]


def resolve_compression_savings(state: Any, model: str | None, *, served: bool) -> dict[str, Any]:
    """Book (``served``: a model answered) or drop (a cache answered) the state's held
    compression savings; the state update that clears them (``{}`` when none are held)."""
    keys = read_state(
        state, "compression_pending", schema="CompressState", node="compress_context", default=None
    )
    if not keys:
        return {}
    if served:
        book_savings(keys, model)
    else:
        drop_savings(keys)
    return {"compression_pending": None}


class _Collect:
    """A ledger stand-in that keeps the compression's row, to be held until the call."""

    def __init__(self) -> None:
        self.records: list[LedgerRecord] = []

    def record(self, record: LedgerRecord) -> None:
        self.records.append(record)


def config_tags(config: RunnableConfig | None) -> dict[str, Any]:
    """Ledger tags from a run's config, read by ``graphthrift.kernel.run_tags`` alone: the
    metadata tags, the LangGraph node, the thread and run ids."""
    return {k: v for k, v in run_tags(config).items() if k in TAG_FIELDS}


def _read(state: Any, key: str) -> Any:
    return read_state(state, key, schema="CompressState", node="compress_context")


def _text(item: Any, key: str, index: int) -> str:
    """The text of one state item: a Document, a str, or a dict with ``page_content``."""
    if isinstance(item, Document):
        return item.page_content
    if isinstance(item, str):
        return item
    if isinstance(item, Mapping) and isinstance(item.get("page_content"), str):
        return str(item["page_content"])
    raise TypeError(
        f"compress_context: {key}[{index}] is {type(item).__name__}; expected a langchain "
        "Document, a str or a dict with 'page_content'"
    )


def _question(value: Any, key: str) -> str:
    """A str, or the last user message of a message list (e.g. ``messages``)."""
    if isinstance(value, str):
        return value
    if isinstance(value, Sequence):
        for message in reversed(to_messages(value)):
            if message.role == "user":
                return message.text
        return ""
    raise TypeError(
        f"compress_context: {key!r} must be a str or a list of messages, got {type(value).__name__}"
    )


def _rebuild(items: list[Any], result: CompressionResult) -> list[Any]:
    """The kept items, same type and metadata as the inputs, dropped ones left out."""
    out: list[Any] = []
    for item, text in zip(items, result.texts, strict=True):
        if not text:
            continue
        if isinstance(item, Document):
            out.append(item.model_copy(update={"page_content": text}))
        elif isinstance(item, str):
            out.append(text)
        else:
            out.append({**item, "page_content": text})
    return out


def _stats(result: CompressionResult) -> dict[str, Any]:
    return {
        "original_tokens": result.original_tokens,
        "kept_tokens": result.kept_tokens,
        "removed_tokens": result.removed_tokens,
        "kept_fraction": round(result.kept_fraction, 4),
        "compressor": result.compressor,
    }


def compress_context(
    compressor: Compressor | None = None,
    *,
    documents_key: str = "documents",
    question_key: str = "question",
    output_key: str | None = None,
    stats_key: str | None = None,
    target_ratio: float | None = None,
    max_tokens: int | None = None,
    model: str | None = None,
    ledger: Any = None,
    tags: Mapping[str, Any] | None = None,
    name: str = "compress_context",
    defer_saving: bool = False,
) -> RunnableLambda[Any, dict[str, Any]]:
    """A node that keeps only what answers the question from the retrieved documents.

    State keys (``CompressState``; a state without them raises ``StateSchemaError``):
        reads ``documents_key`` (default ``documents``): a list of LangChain ``Document``,
            str, or dicts with ``page_content``, best first.
        reads ``question_key`` (default ``question``): a str, or a message list (e.g.
            ``"messages"``) whose last user message is the question.
        writes ``output_key`` (default: ``documents_key`` itself): the kept items, same
            types, metadata and ids as the inputs, in input order; items with nothing
            relevant are dropped. Give ``documents_key`` no appending reducer, or write
            to another key.
        writes ``stats_key`` (only if given): ``{original_tokens, kept_tokens,
            removed_tokens, kept_fraction, compressor}``.

    Args:
        compressor: any ``Compressor``; default an ``ExtractiveCompressor`` built from
            ``target_ratio`` (kept fraction in (0, 1]), ``max_tokens`` and ``model`` (the
            downstream model's name). Given together with any of them, raises
            ``ConfigError``: configure the compressor itself.
        ledger: where the saving is recorded (default: the compressor's own ledger, if any).
        tags: fixed ledger tags; the run's metadata (tenant_id, feature, ...), the node
            name and the thread id are added per call.
        name: the runnable's name (shown in traces).
        defer_saving: hold the saving in ``compression_pending`` until the model call it
            shrank: a ``budget_guard`` settle or ``route_model`` downstream books it at the
            model actually called, and a cached answer drops it (the cache books the whole
            call, so the saving is booked once). Without it the saving is booked at once,
            at ``model``.

    Returns:
        A runnable (sync and async) to pass to ``StateGraph.add_node``.

    Example:
        >>> from typing_extensions import TypedDict
        >>> from langgraph.graph import StateGraph, START
        >>> class State(TypedDict):
        ...     question: str
        ...     documents: list[str]
        >>> builder = StateGraph(State)
        >>> builder.add_node("compress", compress_context(max_tokens=300))  # doctest: +ELLIPSIS
        <langgraph.graph.state.StateGraph object at ...>
    """
    core = build_compressor(
        "compress_context",
        compressor,
        target_ratio=target_ratio,
        max_tokens=max_tokens,
        model=model,
    )
    fixed = dict(tags or {})
    target_key = output_key or documents_key

    def inputs(
        state: Any, config: RunnableConfig | None
    ) -> tuple[str, list[Any], list[str], dict[str, Any]]:
        raw = _read(state, documents_key)
        items = [] if raw is None else list(raw)
        texts = [_text(item, documents_key, i) for i, item in enumerate(items)]
        return (
            _question(_read(state, question_key), question_key),
            items,
            texts,
            {**fixed, **config_tags(config)},
        )

    held = defer_saving

    def target(state: Any) -> Any:
        """Where the saving goes now: the ledger, or a collector when it is held."""
        if not held:
            return ledger
        read_state(state, "compression_pending", schema="CompressState", node="compress_context")
        return _Collect()

    def update(items: list[Any], result: CompressionResult, sink: Any) -> dict[str, Any]:
        out: dict[str, Any] = {target_key: _rebuild(items, result)}
        if stats_key:
            out[stats_key] = _stats(result)
        final = ledger if ledger is not None else getattr(core, "ledger", None)
        if isinstance(sink, _Collect) and sink.records and final is not None:
            out["compression_pending"] = [defer_saving_of(sink.records[0], final)]
        return out

    def node(state: Any, config: RunnableConfig) -> dict[str, Any]:
        question, items, texts, call_tags = inputs(state, config)
        sink = target(state)
        result = core.compress(question, texts, ledger=sink, tags=call_tags)
        return update(items, result, sink)

    async def anode(state: Any, config: RunnableConfig) -> dict[str, Any]:
        question, items, texts, call_tags = inputs(state, config)
        sink = target(state)
        result = await core.acompress(question, texts, ledger=sink, tags=call_tags)
        return update(items, result, sink)

    return RunnableLambda(node, afunc=anode, name=name)
