"""``CostTagger``: a LangChain callback handler that writes one ledger record per LLM call.

It reads tenant_id, feature, route and prompt_version from the run's ``config["metadata"]``
(falling back to the tagger's defaults), the node name and thread_id from LangGraph's
metadata, and usage from the response. When usage is missing (streaming without
``stream_usage``, fake or custom models) it estimates with tiktoken and marks the record
``usage_source="estimated"`` instead of recording zero, which is what LangChain's
``UsageMetadataCallbackHandler`` does in those cases.

It tells ``graphthrift.kernel.run_tags`` a node's root run (``graphthrift_root_run``), so
that rows booked by middleware and cache nodes (a cache hit, a refusal) name the run that
the call rows name, and ``report --per task`` counts a run answered from the cache. It
also binds the run's tags, root run id included, for the duration of each model call, which is how ``as_langchain_cache()`` (a ``BaseCache``, which never sees
the config) knows the tenant and user. LangChain calls ``on_chat_model_start`` before its
cache lookup. A call answered from our ``BaseCache`` is not booked: the cache already
booked it as a ``cache_hit`` record (issue 12, item 3).
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.outputs import ChatGeneration, LLMResult

from graphthrift.kernel import bind_config_tags, read_usage, unbind_run_tags
from graphthrift.ledger.calls import CALL_TAGS, CallRecorder
from graphthrift.ledger.ledger import Ledger
from graphthrift.ledger.usage import Usage

_MODEL_KEYS = ("model_name", "model", "model_id", "deployment_name")
#: Run metadata set by graphthrift components that write their own ledger record.
RECORDED_FLAG = "graphthrift_ledger_recorded"
#: ``response_metadata`` key of a generation our ``BaseCache`` served (booked by the cache).
CACHE_HIT_KEY = "graphthrift_cache"
_MAX_BOUND = 10_000
#: Metadata bound beside the run tags: a cache's per-user scope.
_BOUND_META = ("scope",)


class CostTagger(BaseCallbackHandler):
    """Record every chat-model and LLM call of a runnable or graph in the ledger.

    Args:
        ledger: the ``Ledger`` to write to.
        model: model name to use when a call does not name one (e.g. fake models).
        **default_tags: tenant_id, feature, route or prompt_version used when the run's
            metadata has none.

    Example:
        ```python
        tagger = CostTagger(ledger, feature="support")
        graph.invoke(state, config={"callbacks": [tagger],
                                    "metadata": {"tenant_id": "acme"}})
        ```
    """

    run_inline = True  # cheap and thread-safe: never hop to an executor in async runs
    raise_error = False

    def __init__(self, ledger: Ledger, *, model: str | None = None, **default_tags: Any) -> None:
        unknown = set(default_tags) - set(CALL_TAGS)
        if unknown:
            raise TypeError(
                f"CostTagger got unknown tags {sorted(unknown)}; known tags are {CALL_TAGS}"
            )
        super().__init__()
        self.ledger = ledger
        self._recorder = CallRecorder(
            ledger, defaults=default_tags, model=model, aliases={"node": "langgraph_node"}
        )
        self._parents: dict[UUID, UUID | None] = {}
        self._defaults = dict(default_tags)
        self._bound: dict[UUID, Any] = {}

    # -- chains: only to find each call's root run ------------------------------------------

    def on_chain_start(
        self,
        serialized: Any,
        inputs: Any,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        **kwargs: Any,
    ) -> None:
        self._parents[run_id] = parent_run_id

    def on_chain_end(self, outputs: Any, *, run_id: UUID, **kwargs: Any) -> None:
        self._parents.pop(run_id, None)

    def on_chain_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._parents.pop(run_id, None)

    def graphthrift_root_run(self, run_id: UUID) -> UUID | None:
        """The root run of ``run_id`` (a node's chain run), if this handler saw it start.

        ``graphthrift.kernel.run_tags`` asks the handlers of a node's config, so that the
        rows middleware and cache nodes book (a cache hit, a refusal) name the run that the
        call rows name. A context variable bound at the root's start cannot do it: LangGraph
        ends an async run in another context, and the binding outlived the run."""
        if run_id not in self._parents:
            return None
        return self._root(run_id, self._parents[run_id])

    def _root(self, run_id: UUID, parent: UUID | None) -> UUID:
        root = run_id
        while parent is not None:
            root = parent
            parent = self._parents.get(parent)
        return root

    # -- model calls ------------------------------------------------------------------------

    def _start(
        self,
        run_id: UUID,
        parent_run_id: UUID | None,
        metadata: dict[str, Any] | None,
        prompt: Any,
        invocation_params: dict[str, Any] | None,
    ) -> None:
        meta = metadata or {}
        root = self._root(run_id, parent_run_id) if parent_run_id is not None else run_id
        self._bind(run_id, meta, root)
        if meta.get(RECORDED_FLAG):
            return  # a graphthrift component books this call itself (e.g. ChatModelSummarizer)
        model = meta.get("ls_model_name")
        if not model and invocation_params:
            model = _named_model(invocation_params)
        self._recorder.start(
            run_id,
            model=model,
            tags=meta,
            prompt=prompt,
            parent_id=parent_run_id,
            extra_tags={"run_id": root},
            request=invocation_params,  # tools and a top-level cache_control live here
        )

    def on_chat_model_start(
        self,
        serialized: Any,
        messages: list[list[Any]],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        metadata: dict[str, Any] | None = None,
        invocation_params: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self._start(
            run_id, parent_run_id, metadata, messages[0] if messages else None, invocation_params
        )

    def on_llm_start(
        self,
        serialized: Any,
        prompts: list[str],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        metadata: dict[str, Any] | None = None,
        invocation_params: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self._start(run_id, parent_run_id, metadata, "\n".join(prompts), invocation_params)

    def on_llm_new_token(self, token: Any, *, run_id: UUID, **kwargs: Any) -> None:
        self._recorder.token(run_id)

    def on_llm_end(self, response: LLMResult, *, run_id: UUID, **kwargs: Any) -> None:
        self._unbind(run_id)
        if _served_by_our_cache(response):
            self._recorder.discard(run_id)  # the cache booked this hit (kind="cache_hit")
            return
        self._recorder.end_with(run_id, lambda: _read_result(response))

    def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._unbind(run_id)
        self._recorder.error(run_id, error)

    # -- scope for code that cannot see the config (our BaseCache) ---------------------------

    def _bind(self, run_id: UUID, meta: dict[str, Any], root: UUID) -> None:
        """Bind the call's run tags (``run_tags`` of its metadata and root run, and its
        ``scope``); the kernel works them out only if something reads them."""
        bound = self._bound
        if run_id in bound:  # the same handler twice in a call's callbacks: bind once
            return
        if len(bound) >= _MAX_BOUND:  # calls that never ended (abandoned streams)
            bound.pop(next(iter(bound)))
        bound[run_id] = bind_config_tags(
            {"metadata": meta, "run_id": root}, keep=_BOUND_META, **self._defaults
        )

    def _unbind(self, run_id: UUID) -> None:
        token = self._bound.pop(run_id, None)
        if token is not None:
            unbind_run_tags(token)


def _named_model(params: dict[str, Any]) -> str | None:
    """The model the call's parameters name (the first of ``_MODEL_KEYS`` that is a str)."""
    for key in _MODEL_KEYS:
        value = params.get(key)
        if isinstance(value, str):
            return value
    return None


def _served_by_our_cache(response: LLMResult) -> bool:
    for generation in response.generations[0] if response.generations else ():
        meta = (
            generation.message.response_metadata if isinstance(generation, ChatGeneration) else {}
        )
        if (meta or {}).get(CACHE_HIT_KEY):
            return True
    return False


def _read_result(response: LLMResult) -> tuple[Usage | None, str, str | None]:
    """Usage (summed over choices), output text and model name from an ``LLMResult``."""
    usage: Usage | None = None
    texts: list[str] = []
    model: str | None = None
    for generation in response.generations[0] if response.generations else ():
        texts.append(generation.text)
        if isinstance(generation, ChatGeneration):
            message = generation.message
            meta = message.response_metadata or {}
            model = model or next(
                (meta[k] for k in _MODEL_KEYS if isinstance(meta.get(k), str)), None
            )
            found = read_usage(getattr(message, "usage_metadata", None))
            if found is not None:
                usage = (
                    found
                    if usage is None
                    else Usage(
                        usage.input_tokens,  # choices share one prompt
                        usage.output_tokens + found.output_tokens,
                        usage.cached_tokens,
                        usage.reasoning_tokens + found.reasoning_tokens,
                    )
                )
    if usage is None and response.llm_output:
        usage = read_usage(
            response.llm_output.get("token_usage") or response.llm_output.get("usage")
        )
        model = model or next(
            (
                response.llm_output[k]
                for k in _MODEL_KEYS
                if isinstance(response.llm_output.get(k), str)
            ),
            None,
        )
    return usage, "".join(texts), model
