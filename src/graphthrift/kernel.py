"""The adapter kernel: the one place every adapter reads run tags, scope, usage and state.

LangGraph nodes, ``create_agent`` middleware, LangChain callbacks and ``BaseCache``, and the
LlamaIndex components all translate their framework's run into the same few values: who is
asking (tenant, user), what for (feature, route, prompt version), where (thread, run, node),
and what the provider reported (usage). Reading them six ways let the adapters drift apart
(issue 11, item 3): this module reads them one way. Importing it imports no framework, so
the core may use it too; ``run_config`` and ``ask_human`` import LangGraph when called.

Rules, documented in the README ("Scope and tags"):

- ``tenant_id``, ``user_id``, ``feature``, ``route``, ``prompt_version``, ``namespace`` and
  the ``*_version`` keys come from ``config["metadata"]``; ``None`` and empty strings mean
  "not set" (never a truthiness test on other values: ``0`` is a valid id).
- ``thread_id`` comes from the metadata, else ``config["configurable"]["thread_id"]``.
- ``run_id`` comes from the metadata, else ``config["run_id"]`` (LangGraph's own run id when
  the caller set one), else the run scope an adapter set for this run (``run_scope``).
- ``node`` is LangGraph's ``langgraph_node``.
- A cache's per-user ``scope`` is ``metadata["scope"]``, else ``metadata["user_id"]``.
  Cache adapters pass the latter as ``user_id`` (``cache_request``): the cache applies it
  to answers that depend on earlier turns, and shares first-turn answers in the tenant.
"""

from __future__ import annotations

import contextvars
import hashlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any
from uuid import UUID

from graphthrift.ledger.usage import read_usage

__all__ = [
    "CACHE_SCOPE_KEYS",
    "RUN_TAG_KEYS",
    "RunTagsBinding",
    "answered_by",
    "ask_human",
    "bind_config_tags",
    "bind_run_tags",
    "bound_run_tags",
    "cache_request",
    "cache_scope",
    "current_run_tags",
    "hit_tags",
    "model_name",
    "read_state",
    "read_usage",
    "reject_conflicts",
    "renamed_argument",
    "run_config",
    "run_tags",
    "scoped",
    "unbind_run_tags",
]

#: Tags an adapter reads from a run's config, in the order they are documented.
RUN_TAG_KEYS: tuple[str, ...] = (
    "tenant_id",
    "user_id",
    "feature",
    "route",
    "prompt_version",
    "thread_id",
    "run_id",
    "node",
)
#: Keys of a cache scope that come straight from the metadata.
CACHE_SCOPE_KEYS: tuple[str, ...] = (
    "tenant_id",
    "scope",
    "namespace",
    "prompt_version",
    "model_version",
    "corpus_version",
)


class RunTagsBinding:
    """One binding of run tags: a frame on the current context's stack of bound tags.

    Frames are removed by identity, not by resetting the variable, so bindings may end in
    any order: two callback handlers see a call's start and end in the same order, and a
    token reset would restore the first call's tags after both ended.

    A frame bound by ``bind_config_tags`` works its tags out when they are first read: a
    callback handler binds one for every model call, and few calls read it.
    """

    __slots__ = ("_source", "_tags", "replace")
    #: set by bind_config_tags only: the config, keep, fixed tags and frames beneath
    _source: tuple[
        Mapping[str, Any], tuple[str, ...], Mapping[str, Any], tuple[RunTagsBinding, ...]
    ]

    def __init__(self, tags: Mapping[str, Any], *, replace: bool = False) -> None:
        self._tags: dict[str, Any] | None = dict(tags)
        self.replace = replace

    @property
    def tags(self) -> dict[str, Any]:
        """The bound tags (worked out on the first read for a ``bind_config_tags`` frame)."""
        tags = self._tags
        if tags is None:  # two threads may both work them out: the same dict either way
            config, keep, fixed, below = self._source
            tags = self._tags = _config_tags(config, keep, fixed, _merged(below))
        return tags


_RUN_TAGS: contextvars.ContextVar[tuple[RunTagsBinding, ...]] = contextvars.ContextVar(
    "graphthrift_run_tags", default=()
)


def _bound_tags() -> dict[str, Any] | None:
    return _merged(_RUN_TAGS.get())


def _merged(frames: tuple[RunTagsBinding, ...]) -> dict[str, Any] | None:
    if not frames:
        return None
    merged: dict[str, Any] = {}
    for frame in frames:
        if frame.replace:
            merged = {}
        merged.update(frame.tags)
    return merged


def _push(frame: RunTagsBinding) -> RunTagsBinding:
    _RUN_TAGS.set((*_RUN_TAGS.get(), frame))
    return frame


def _pop(frame: RunTagsBinding) -> None:
    frames = _RUN_TAGS.get()
    if frames and frames[-1] is frame:  # the usual case: bindings end in reverse order
        _RUN_TAGS.set(frames[:-1])
    elif any(f is frame for f in frames):
        _RUN_TAGS.set(tuple(f for f in frames if f is not frame))


_CONTAINERS = (dict, list)  # built once: ``dict | list`` made a new union on every call


def _set(value: Any) -> bool:
    if value.__class__ is UUID:  # run ids: never "", and ``!= ""`` is a Python-level __eq__
        return True
    return value is not None and value != "" and not isinstance(value, _CONTAINERS)


def run_tags(config: Mapping[str, Any] | None, **fixed: Any) -> dict[str, Any]:
    """The run's tags (``RUN_TAG_KEYS``) from a LangChain/LangGraph config.

    ``fixed`` values (an adapter's constructor tags) are the defaults; the run's own
    metadata wins over them. Tags bound with ``bound_run_tags`` fill what the config lacks.
    Without a ``run_id`` anywhere, a node's config gives its graph run's id when a
    ``CostTagger`` is among its callbacks.
    """
    return _run_tags(config or {}, fixed, _bound_tags())


def _run_tags(
    config: Mapping[str, Any], fixed: Mapping[str, Any], bound: Mapping[str, Any] | None
) -> dict[str, Any]:
    """``run_tags`` over the tags ``bound`` beneath the caller (``_bound_tags()`` for it)."""
    metadata: Mapping[str, Any] = config.get("metadata") or {}
    configurable: Mapping[str, Any] = config.get("configurable") or {}
    out: dict[str, Any] = {k: v for k, v in fixed.items() if _set(v)}
    if bound:
        for key in RUN_TAG_KEYS:
            value = bound.get(key)
            if value is not None and key not in out and _set(value):
                out[key] = value
    for key in RUN_TAG_KEYS:
        value = metadata.get(key)
        if value is not None and _set(value):  # most keys are absent: skip the call
            out[key] = value
    if not _set(metadata.get("thread_id")) and _set(configurable.get("thread_id")):
        out["thread_id"] = configurable["thread_id"]
    if not _set(metadata.get("run_id")) and _set(config.get("run_id")):
        out["run_id"] = config["run_id"]
    if "run_id" not in out:
        root = _root_run(config)
        if root is not None:
            out["run_id"] = root
    if _set(metadata.get("langgraph_node")):
        out["node"] = metadata["langgraph_node"]
    for key in ("thread_id", "run_id"):
        if key in out:
            out[key] = str(out[key])
    return out


def _root_run(config: Mapping[str, Any]) -> str | None:
    """The root run of the node whose config this is, from a handler in its callbacks that
    tracks runs (``CostTagger.graphthrift_root_run``): a node's config names its own chain
    run (``callbacks.parent_run_id``), never the graph run that the call rows name."""
    manager = config.get("callbacks")
    parent = getattr(manager, "parent_run_id", None)
    if parent is None:
        return None
    for handler in getattr(manager, "handlers", None) or ():
        find = getattr(handler, "graphthrift_root_run", None)
        root = find(parent) if callable(find) else None
        if root is not None:
            return str(root)
    return None


def cache_scope(config: Mapping[str, Any] | None, **fixed: Any) -> dict[str, Any]:
    """A cache's scope keywords from a run's config: ``CACHE_SCOPE_KEYS``, with ``scope``
    falling back to ``user_id``. ``fixed`` values are defaults the metadata overrides."""
    metadata: Mapping[str, Any] = (config or {}).get("metadata") or {}
    out: dict[str, Any] = {k: v for k, v in fixed.items() if _set(v)}
    bound = _bound_tags() or {}
    if "tenant_id" not in out and _set(bound.get("tenant_id")):
        out["tenant_id"] = bound["tenant_id"]
    if "scope" not in out and _set(bound.get("user_id")):
        out["scope"] = bound["user_id"]
    for key in CACHE_SCOPE_KEYS:
        if _set(metadata.get(key)):
            out[key] = metadata[key]
    if not _set(metadata.get("scope")) and _set(metadata.get("user_id")):
        out["scope"] = metadata["user_id"]
    return out


def cache_request(config: Mapping[str, Any] | None, **fixed: Any) -> dict[str, Any]:
    """What every cache adapter passes to a lookup or a store: ``cache_scope``, except that
    a scope that only came from the user's id is passed as ``user_id``.

    The cache then applies the user's scope to answers that depend on earlier turns, and
    shares first-turn answers across the tenant's users (issue 11, item 3). An explicit
    ``scope`` (metadata or ``fixed``) always applies.
    """
    metadata: Mapping[str, Any] = (config or {}).get("metadata") or {}
    out = cache_scope(config, **fixed)
    if not (_set(metadata.get("scope")) or _set(fixed.get("scope"))):
        user = out.pop("scope", None)
        if user is not None:
            out["user_id"] = user
    return out


#: The run tags a cache hit's ledger row carries (so a report by thread or run counts it).
HIT_TAG_KEYS: tuple[str, ...] = ("feature", "node", "thread_id", "run_id")


def hit_tags(tags: Mapping[str, Any]) -> dict[str, Any]:
    """What every cache adapter passes to a lookup besides the scope: the run's feature,
    node, thread and run, from its ``run_tags``, so the hit's saving is booked to them."""
    return {key: tags.get(key) for key in HIT_TAG_KEYS}


@contextmanager
def bound_run_tags(tags: Mapping[str, Any]) -> Iterator[None]:
    """Make ``tags`` the current run's tags for code that cannot see the run's config.

    LangChain's ``BaseCache.lookup(prompt, llm_string)`` is such code: our callbacks and
    middleware bind the run's tags here, and the cache adapter reads them back with
    ``current_run_tags``. Context variables follow asyncio tasks and copied contexts, so
    concurrent runs never see each other's tags.
    """
    frame = _push(RunTagsBinding(tags, replace=True))
    try:
        yield
    finally:
        _pop(frame)


def bind_run_tags(tags: Mapping[str, Any]) -> RunTagsBinding:
    """Bind ``tags`` (over the ones already bound) until ``unbind_run_tags(token)``.

    For callback handlers, whose start and end of a model call are two methods: the start
    binds, the end unbinds. ``bound_run_tags`` is the ``with`` form.
    """
    return _push(RunTagsBinding({k: v for k, v in tags.items() if _set(v)}))


def bind_config_tags(
    config: Mapping[str, Any], *, keep: tuple[str, ...] = (), **fixed: Any
) -> RunTagsBinding:
    """``bind_run_tags(run_tags(config, **fixed))``, plus the metadata's ``keep`` keys that
    are set, with the tags worked out when something first reads them.

    A callback handler binds the run's tags at every model call's start for the one reader
    that cannot see the config (our ``BaseCache``); most calls never read them, so working
    them out there cost every call about 7 µs. The tags read are the ones binding would
    have given: the frames bound beneath this one are kept with it. ``config`` (and its
    metadata) is read then, so it must not be changed while bound, as a callback's run
    metadata is not. A config naming no ``run_id`` is read at once: its root run comes
    from handlers whose runs may have ended by the time the tags are read.
    """
    metadata: Mapping[str, Any] = config.get("metadata") or {}
    if not (_set(metadata.get("run_id")) or _set(config.get("run_id"))):
        frame = RunTagsBinding(_config_tags(config, keep, fixed, _bound_tags()))
    else:
        frame = RunTagsBinding.__new__(RunTagsBinding)
        frame._tags = None
        frame._source = (config, keep, fixed, _RUN_TAGS.get())
        frame.replace = False
    return _push(frame)


def _config_tags(
    config: Mapping[str, Any],
    keep: tuple[str, ...],
    fixed: Mapping[str, Any],
    bound: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """What ``bind_config_tags`` binds, over the tags ``bound`` beneath it."""
    tags = _run_tags(config, fixed, bound)
    metadata: Mapping[str, Any] = config.get("metadata") or {}
    for key in keep:
        if _set(metadata.get(key)):
            tags[key] = metadata[key]
    return {k: v for k, v in tags.items() if _set(v)}


def unbind_run_tags(binding: RunTagsBinding) -> None:
    """Undo ``bind_run_tags``, in any order; a binding of another context (or undone twice)
    is ignored."""
    _pop(binding)


@contextmanager
def scoped(**tags: Any) -> Iterator[None]:
    """Run the block as one tenant's (and user's) work, for code that cannot see a config.

    LangChain's ``BaseCache.lookup(prompt, llm_string)`` gets no config: without a scope
    from the run, ``as_langchain_cache(cache)`` serves nothing (issue 12, item 2). Our callbacks
    (``CostTagger``) bind the run's tags for each model call; outside them, say it here::

        with graphthrift.scoped(tenant_id="acme", user_id="alice"):
            model.invoke("What is my balance?")

    Blocks nest: an inner block overrides an outer one key by key; None leaves a key as is.
    """
    frame = _push(RunTagsBinding({k: v for k, v in tags.items() if v is not None}))
    try:
        yield
    finally:
        _pop(frame)


def current_run_tags() -> Mapping[str, Any] | None:
    """The tags bound by ``bound_run_tags`` for the current context, or None."""
    return _bound_tags()


class _Missing:
    pass


_MISSING = _Missing()


def read_state(state: Any, key: str, *, schema: str, node: str, default: Any = _MISSING) -> Any:
    """``state[key]`` from a mapping or an attribute-style state.

    A state without the key raises ``StateSchemaError`` naming the schema to extend,
    unless a ``default`` is given: a node must never fail silently on a state that lacks
    its keys (issue 11, item 7).
    """
    from graphthrift.errors import StateSchemaError

    if isinstance(state, Mapping):
        if key in state:
            return state[key]
    elif hasattr(state, key):
        return getattr(state, key)
    if default is not _MISSING:
        return default
    raise StateSchemaError(node=node, key=key, schema=schema)


def prompt_cache_key(config: Mapping[str, Any] | None, **fixed: Any) -> str | None:
    """OpenAI's ``prompt_cache_key`` for a run: a hash of its tenant and thread.

    OpenAI routes requests with the same key and prefix to the same cache, so each thread
    of a tenant keeps hitting its warm prefix, and one tenant's key never names another's.
    None when the run has no tenant (nothing stable to key on). The hash keeps tenant and
    thread ids out of the provider's logs.
    """
    tags = run_tags(config, **fixed)
    tenant = tags.get("tenant_id")
    if tenant is None:
        return None
    thread = tags.get("thread_id")
    digest = hashlib.sha256(f"{tenant}\x1f{thread or ''}".encode()).hexdigest()
    return f"gt-{digest[:32]}"


_MODEL_ATTRS = ("model_name", "model", "model_id")


def model_name(model: Any, default: str | None = None) -> str | None:
    """The priced name of a chat model object (``model_name``, ``model`` or ``model_id``).

    A model bound with ``bind``/``bind_tools`` is read through to the bound model. ``default``
    when none is set: callers that must price the call raise on ``None`` themselves.
    """
    target = getattr(model, "bound", model)
    for attr in _MODEL_ATTRS:
        value = getattr(target, attr, None)
        if isinstance(value, str) and value:
            return value
    return default


def answered_by(message: Any, default: str | None = None) -> str | None:
    """The model the provider says answered (``response_metadata`` ``model_name``/``model``)."""
    meta = getattr(message, "response_metadata", None) or {}
    for key in _MODEL_ATTRS:
        value = meta.get(key)
        if isinstance(value, str) and value:
            return value
    return default


def run_config() -> Mapping[str, Any]:
    """The running LangGraph/LangChain config, or ``{}`` outside a run.

    For adapters that are not handed the config (middleware hooks, wrapped models).
    """
    try:
        from langgraph.config import get_config
    except ImportError:  # pragma: no cover - langgraph is a core dependency
        return {}
    try:
        return get_config()
    except RuntimeError:  # outside a LangGraph run
        return {}


def ask_human(payload: Any) -> Any:
    """Pause the graph with a LangGraph ``interrupt`` carrying ``payload``; return the resume value.

    The one place adapters raise a human interrupt (it needs a checkpointer).
    """
    from langgraph.types import interrupt

    return interrupt(payload)


def renamed_argument(where: str, name: str, value: Any, old_name: str, old_value: Any) -> Any:
    """An argument that has a new spelling: ``value``, else the deprecated ``old_value``.

    The old spelling warns (``DeprecationWarning``); both given, different, raise
    ``ConfigError`` naming both, since one of them would be silently ignored.
    """
    if old_value is None:
        return value
    from graphthrift.errors import ConfigError

    if value is not None and value != old_value:
        raise ConfigError(
            f"{where}({name}=..., {old_name}=...)",
            (value, old_value),
            f"give {name} only ({old_name} is its deprecated spelling)",
        )
    import warnings

    warnings.warn(
        f"{where}({old_name}=...) is deprecated; use {name}=", DeprecationWarning, stacklevel=3
    )
    return old_value


def reject_conflicts(owner: str, name: str, given: Any, **settings: Any) -> None:
    """Raise ``ConfigError`` when ``name`` is given together with settings it makes moot.

    An adapter built around a ready object (``compressor=``, ``pruner=``, ``summarizer=``)
    cannot honour the settings that would build one; ignoring them silently hides a
    mistake. ``settings`` maps each such setting to its value (``None``: not given).
    """
    if given is None:
        return
    clash = sorted(key for key, value in settings.items() if value is not None)
    if clash:
        from graphthrift.errors import ConfigError

        rule = (
            f"{owner} takes either {name}= or the settings that build one "
            f"({', '.join(clash)}), not both; configure the {name} itself"
        )
        raise ConfigError(name, type(given).__name__, rule)
