"""LlamaIndex memory on graphthrift's history pruning: a memory block and a chat memory.

- ``HistoryMemoryBlock`` plugs into ``llama_index.core.memory.Memory``: the messages that
  Memory's FIFO ejects are folded into a running summary (appended sections, compacted past
  a cap), which Memory renders into its system message. Memory already evicts whole turns;
  the block brings the summary that does not churn and needs no LLM by default.
- ``PrunedChatMemory`` is a chat memory whose ``get()`` returns the pruned view of the whole
  stored thread: system messages, the summary, and a verbatim window that never starts
  inside a tool-call pair and only moves when the budget is passed, so the prompt prefix
  (and the provider's cache) stays stable between folds. The thread itself is kept.

Both keep their state as plain JSON dicts on the model, so ``to_dict()``/``to_json()``
round-trip them.
"""

from __future__ import annotations

from typing import Any

from graphthrift.errors import MissingExtra

try:
    from llama_index.core.base.llms.types import ChatMessage, MessageRole, TextBlock
    from llama_index.core.bridge.pydantic import Field, PrivateAttr
    from llama_index.core.memory.memory import BaseMemoryBlock
    from llama_index.core.memory.types import DEFAULT_CHAT_STORE_KEY, BaseChatStoreMemory
    from llama_index.core.storage.chat_store import BaseChatStore, SimpleChatStore
except ImportError as exc:  # pragma: no cover - exercised without the extra
    raise MissingExtra("llamaindex", "llama-index-core") from exc

from graphthrift.history.pruner import HistoryPruner, build_pruner
from graphthrift.history.state import RECALL_ID, HistoryState, PruneResult
from graphthrift.history.truncate import truncate_text
from graphthrift.kernel import run_tags
from graphthrift.summarize.base import Summarizer
from graphthrift.text.messages import Message
from graphthrift.text.tokens import count_text, seed_tiktoken_cache

__all__ = ["HistoryMemoryBlock", "PrunedChatMemory"]

_DEFAULT_SESSION = "default"
# As llama_index's ChatMemoryBuffer: the history may use this share of the LLM's window.
_CONTEXT_WINDOW_RATIO = 0.75


def _build_pruner(
    owner: str, pruner: HistoryPruner | None, settings: dict[str, Any]
) -> HistoryPruner:
    # llama_index's default tokenizer (cl100k_base) reads the tiktoken cache that
    # graphthrift.text.tokens points TIKTOKEN_CACHE_DIR at; seed it so Memory works offline too.
    seed_tiktoken_cache()
    return build_pruner(owner, pruner, **settings)


def _to_llamaindex(result: PruneResult, summary_role: str) -> list[ChatMessage]:
    role = MessageRole.SYSTEM if summary_role == "system" else MessageRole.USER

    def make_summary(m: Message) -> ChatMessage:
        flag = "graphthrift_recall" if m.id == RECALL_ID else "graphthrift_summary"
        return ChatMessage(role=role, content=m.text, additional_kwargs={flag: True})

    def copy_truncated(original: Any, m: Message) -> ChatMessage:
        if isinstance(m.content, str):
            return original.model_copy(update={"blocks": [TextBlock(text=m.content)]})  # type: ignore[no-any-return]
        blocks = [
            TextBlock(text=str(new.get("text", "")))
            if getattr(old, "block_type", "") == "text"
            else old
            for old, new in zip(original.blocks, m.content, strict=False)
        ]
        return original.model_copy(update={"blocks": blocks})  # type: ignore[no-any-return]

    return list(result.materialize(make_summary, copy_truncated))


class HistoryMemoryBlock(BaseMemoryBlock[str]):
    """A ``Memory`` block that folds ejected messages into a running summary.

    With ``recall=FoldedTurnStore(store)`` the ejected messages are also kept verbatim under
    (``tenant_id``, the Memory's ``session_id``), and the block's content adds the ones most
    relevant to the latest user message (at most ``recall_k``, within ``recall_tokens``)
    after the summary.

    Args:
        pruner: the ``HistoryPruner`` whose summarizer and caps to use; default one from
            ``pruner_settings`` (``summarizer``, ``max_summary_tokens``, ``recall``, ...).
        name, priority: as for any memory block (priority 1: Memory may shorten it last).
        tenant_id: recall scope; default the bound run tags' tenant_id, or ''.

    Example:
        >>> from llama_index.core.memory import Memory
        >>> memory = Memory.from_defaults(session_id="s", token_limit=4000,
        ...                               memory_blocks=[HistoryMemoryBlock()])
    """

    name: str = Field(default="conversation_summary", description="The name of the memory block.")
    priority: int = Field(
        default=1, description="Memory truncates blocks with priority > 0 last-first."
    )
    states: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="HistoryState per session."
    )
    tenant_id: str | None = Field(
        default=None, description="Recall scope; default the bound run tags' tenant_id, or ''."
    )
    _pruner: HistoryPruner = PrivateAttr()

    def __init__(self, *, pruner: HistoryPruner | None = None, **data: Any) -> None:
        settings = {k: data.pop(k) for k in list(data) if k in _PRUNER_SETTINGS}
        super().__init__(**data)
        self._pruner = _build_pruner(type(self).__name__, pruner, settings)

    @property
    def pruner(self) -> HistoryPruner:
        """The pruner whose summarizer writes the sections."""
        return self._pruner

    def summary(self, session_id: str | None = None) -> str:
        """The running summary of a session."""
        return HistoryState.from_dict(self.states.get(session_id or _DEFAULT_SESSION)).summary

    def _tenant(self) -> str:
        """The recall tenant, through the adapter kernel (bound run tags fill it if unset)."""
        return str(run_tags(None, tenant_id=self.tenant_id).get("tenant_id") or "")

    async def _aget(self, messages: list[ChatMessage] | None = None, **block_kwargs: Any) -> str:
        session = str(block_kwargs.get("session_id") or _DEFAULT_SESSION)
        recalled = await self._arecall(messages or [], session)
        return "\n\n".join(part for part in (self.summary(session), recalled) if part)

    async def _arecall(self, messages: list[ChatMessage], session: str) -> str:
        """The recall message's text for the latest user message, or '' (no store, nothing
        folded yet in this session, no user message, or nothing relevant)."""
        store = self._pruner.recall
        if store is None or not HistoryState.from_dict(await self._seeded(session)).folded_total:
            return ""
        users = [m for m in messages if m.role == MessageRole.USER]
        query = (users[-1].content or "") if users else ""
        if not query.strip():
            return ""
        snippets = await store.arecall(
            self._tenant(),
            session,
            query,
            k=self._pruner.recall_k,
            token_budget=self._pruner.recall_tokens,
        )
        return self._pruner.render_recall(snippets).text if snippets else ""

    async def _aput(self, messages: list[ChatMessage]) -> None:
        by_session: dict[str, list[ChatMessage]] = {}
        for m in messages:
            by_session.setdefault(
                str(m.additional_kwargs.get("session_id", _DEFAULT_SESSION)), []
            ).append(m)
        for session, batch in by_session.items():
            folded = await self._pruner.afold(
                batch, await self._seeded(session), tenant=self._tenant(), thread=session
            )
            self.states[session] = folded.to_dict()

    async def _seeded(self, session: str) -> dict[str, Any] | None:
        """The session's state; for a session this block has none of (a new process, a
        block built per request), one numbering on from the turns the recall store keeps.

        ``Memory`` keeps a session's messages in its SQL store across processes, and the
        block's ``states`` are in-process only: numbered from 0 again, the next batch would
        replace the session's kept turns (``FoldedTurnStore.add``). As with LlamaIndex's own
        vector memory block, what the block kept outlives ``Memory.reset``."""
        state = self.states.get(session)
        store = self._pruner.recall
        if state is not None or store is None:
            return state
        start = await store.anext_index(self._tenant(), session)
        self.states[session] = HistoryState(folded_total=start).to_dict()
        return self.states[session]

    async def atruncate(self, content: str, tokens_to_truncate: int) -> str | None:
        """Shorten the content, or drop it if little would be left.

        The recalled turns answer the latest question, so they go last: the summary is
        shortened first (head and tail kept, marked), and only when the recall section alone
        is over the limit are its later lines dropped (the header and whole lines kept).
        """
        model = self._pruner.model
        keep = count_text(content, model) - tokens_to_truncate
        if keep < 32:
            return None
        prefix = self._pruner.recall_prefix
        at = content.find(prefix)
        if at < 0:
            return truncate_text(content, keep, model)
        summary, recalled = content[:at].rstrip(), content[at:]
        room = keep - count_text(recalled, model) - 2
        if summary and room >= 32:
            return f"{truncate_text(summary, room, model)}\n\n{recalled}"
        lines = recalled.split("\n")
        kept = lines[:1]
        for line in lines[1:]:
            if count_text("\n".join([*kept, line]), model) > keep:
                break
            kept.append(line)
        return "\n".join(kept) if len(kept) > 1 else None


_PRUNER_SETTINGS = frozenset(
    {
        "summarizer",
        "max_tokens",
        "target_tokens",
        "keep_turns",
        "max_summary_tokens",
        "section_tokens",
        "compact_tokens",
        "max_message_tokens",
        "summary_role",
        "summary_prefix",
        "model",
        "summary_model",
        "recall",
        "recall_k",
        "recall_tokens",
        "fold_policy",
        "price_model",
        "cache_pricing",
    }
)


class PrunedChatMemory(BaseChatStoreMemory):
    """A chat memory that keeps the whole thread and returns its pruned view.

    ``get()`` prunes the stored thread with ``HistoryPruner``: it folds old turns into a
    summary once the thread passes ``max_tokens`` and keeps the boundary until the next
    fold. The state (summary, boundary) is the ``history_state`` field. With
    ``recall=FoldedTurnStore(store)`` the folded turns are kept verbatim under
    (``tenant_id``, ``thread_id``), and the ones most relevant to the latest user message
    come back just before it, inside the budget.

    Example:
        >>> memory = PrunedChatMemory.from_defaults(max_tokens=4000)
        >>> memory.put(ChatMessage(role="user", content="Book Nopa for 4 at 8 pm."))
        >>> [m.content for m in memory.get()]
        ['Book Nopa for 4 at 8 pm.']
    """

    history_state: dict[str, Any] | None = Field(default=None, description="HistoryState.to_dict()")
    tenant_id: str | None = Field(
        default=None, description="Recall scope; default the bound run tags' tenant_id, or ''."
    )
    thread_id: str | None = Field(
        default=None,
        description="Recall scope; default the bound run tags' thread_id, else chat_store_key.",
    )
    _pruner: HistoryPruner = PrivateAttr()

    def __init__(self, *, pruner: HistoryPruner | None = None, **data: Any) -> None:
        settings = {k: data.pop(k) for k in list(data) if k in _PRUNER_SETTINGS}
        super().__init__(**data)
        self._pruner = _build_pruner(type(self).__name__, pruner, settings)

    @classmethod
    def class_name(cls) -> str:
        return "PrunedChatMemory"

    @classmethod
    def from_defaults(
        cls,
        chat_history: list[ChatMessage] | None = None,
        llm: Any | None = None,
        chat_store: BaseChatStore | None = None,
        chat_store_key: str = DEFAULT_CHAT_STORE_KEY,
        pruner: HistoryPruner | None = None,
        summarizer: Summarizer | None = None,
        max_tokens: int | None = None,
        **settings: Any,
    ) -> PrunedChatMemory:
        """A memory over ``chat_store`` (default in-process); the budget defaults to 75% of
        the LLM's context window when ``llm`` is given, else to ``HistoryPruner``'s."""
        if llm is not None and max_tokens is None and pruner is None:
            max_tokens = int(llm.metadata.context_window * _CONTEXT_WINDOW_RATIO)
        settings.update(
            {
                k: v
                for k, v in (("summarizer", summarizer), ("max_tokens", max_tokens))
                if v is not None
            }
        )
        store = chat_store or SimpleChatStore()
        if chat_history is not None:
            store.set_messages(chat_store_key, chat_history)
        return cls(chat_store=store, chat_store_key=chat_store_key, pruner=pruner, **settings)

    @classmethod
    def from_dict(cls, data: dict[str, Any], **kwargs: Any) -> PrunedChatMemory:
        """Rebuild from ``to_dict()``; ``kwargs`` are pruner settings (not serialised)."""
        from llama_index.core.storage.chat_store.loading import load_chat_store

        data = {k: v for k, v in data.items() if k != "class_name"}
        if isinstance(data.get("chat_store"), dict):
            data["chat_store"] = load_chat_store(data["chat_store"])
        return cls(**data, **kwargs)

    @property
    def pruner(self) -> HistoryPruner:
        """The pruner behind ``get()``."""
        return self._pruner

    def _scope(self) -> dict[str, Any]:
        """Tenant and thread for recall, through the adapter kernel (tags bound with
        ``graphthrift.kernel.bound_run_tags`` fill what the fields leave unset), else the
        ``chat_store_key``: but not LlamaIndex's default key, which every memory built
        without one shares, so that two unrelated memories never recall each other's turns
        (no thread: the pruner keeps and recalls nothing, and counts ``recall_no_thread``)."""
        tags = run_tags(None, tenant_id=self.tenant_id, thread_id=self.thread_id)
        thread = tags.get("thread_id") or (
            self.chat_store_key if self.chat_store_key != DEFAULT_CHAT_STORE_KEY else None
        )
        return {
            "tenant": str(tags.get("tenant_id") or ""),
            "thread": None if thread is None else str(thread),
        }

    def get(self, input: str | None = None, **kwargs: Any) -> list[ChatMessage]:
        """The pruned view of the thread (folds old turns when it passes the budget); with a
        ``recall`` store, the folded turns most relevant to the latest user message too."""
        result = self._pruner.prune(
            self.chat_store.get_messages(self.chat_store_key), self.history_state, **self._scope()
        )
        self.history_state = result.state.to_dict()
        return _to_llamaindex(result, self._pruner.summary_role)

    async def aget(self, input: str | None = None, **kwargs: Any) -> list[ChatMessage]:
        """Async twin of ``get``."""
        messages = await self.chat_store.aget_messages(self.chat_store_key)
        result = await self._pruner.aprune(messages, self.history_state, **self._scope())
        self.history_state = result.state.to_dict()
        return _to_llamaindex(result, self._pruner.summary_role)

    def reset(self) -> None:
        """Forget the thread and its summary."""
        super().reset()
        self.history_state = None

    async def areset(self) -> None:
        """Async twin of ``reset``."""
        await super().areset()
        self.history_state = None

    def set(self, messages: list[ChatMessage]) -> None:
        """Replace the thread; the summary restarts, as the old boundary means nothing now."""
        super().set(messages)
        self.history_state = None

    async def aset(self, messages: list[ChatMessage]) -> None:
        """Async twin of ``set``."""
        await super().aset(messages)
        self.history_state = None
