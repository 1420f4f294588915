"""``ChatModelSummarizer``: a summary written by any LangChain chat model, capped and booked.

The model is duck-typed (``invoke``/``ainvoke``, optional ``bind``), so this module imports
no framework. Its output is capped, and every call is booked in the ledger under route
``summary`` so the cost of pruning is never hidden.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from graphthrift import diagnostics
from graphthrift.config import env_int, env_str
from graphthrift.kernel import model_name as name_of_model
from graphthrift.kernel import renamed_argument
from graphthrift.ledger.records import LedgerRecord, clean_tag, plausible_tokens
from graphthrift.summarize.base import check_summary_args, is_compaction
from graphthrift.summarize.transcript import render_transcript
from graphthrift.text.messages import Message, content_text, to_messages
from graphthrift.text.tokens import count_messages, count_text

__all__ = ["DEFAULT_COMPACTION_PROMPT", "DEFAULT_SECTION_PROMPT", "ChatModelSummarizer"]

DEFAULT_SECTION_PROMPT = (
    "You maintain the running summary of a conversation for an AI assistant. Your text "
    "replaces the new messages below in the assistant's context, so keep every fact a later "
    "turn may need: names, numbers, dates, times, places, ids, amounts, and every decision, "
    "request and open task. Write terse lines. Do not repeat anything the existing summary "
    "already says. Use at most {max_tokens} tokens and reply with the summary text only."
)
DEFAULT_COMPACTION_PROMPT = (
    "Rewrite the conversation summary below into at most {max_tokens} tokens. Keep every "
    "name, number, date, time, place, id, amount and decision that is still relevant; drop "
    "repetition and superseded details. Reply with the summary text only."
)


@dataclass(frozen=True, slots=True)
class _Usage:
    input_tokens: int
    output_tokens: int
    cached_tokens: int
    source: str


class ChatModelSummarizer:
    """A summarizer backed by any LangChain chat model, with capped output and a ledger row.

    The model is duck-typed (``invoke``/``ainvoke``, optional ``bind``), so this module
    does not import LangChain. Output is capped by binding ``max_tokens`` (or
    ``max_tokens_param``) to ``min(max_output_tokens, the pruner's section budget)``. With a
    ledger, every call, failed ones included, is recorded as ``LedgerRecord(kind="llm",
    route="summary")`` with the provider's usage, or an estimate from graphthrift.text.tokens
    (``usage_source="estimated"``) when the model reports none. The call's metadata carries
    ``graphthrift_ledger_recorded=True`` so a cost-tagging callback can skip it.

    Args:
        summary_model: a LangChain chat model (or any Runnable that takes a list of
            role/content dicts and returns a message with ``content``); ``model=`` is its
            deprecated spelling when given a chat model.
        model: the model name to record in the ledger; default read from the chat model's
            attributes (``model_name=`` is its deprecated spelling).
        max_output_tokens: hard cap on the summary's length (env
            ``GRAPHTHRIFT_SUMMARY_MAX_OUTPUT_TOKENS``; default: the pruner's section budget).
        ledger: where to record the call (anything with ``record(LedgerRecord)``).
        max_tokens_param: the keyword the model takes for its output cap.
        prompt, compaction_prompt: system prompts; ``{max_tokens}`` is filled in.
        tenant_id, feature, prompt_version, node, thread_id, run_id: ledger tags.

    Example:
        >>> from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
        >>> fake = GenericFakeChatModel(messages=iter(["User booked Nopa for 4."]))
        >>> ChatModelSummarizer(fake).summarize([Message("user", "Book Nopa for 4")], "", 64)
        'User booked Nopa for 4.'
    """

    def __init__(
        self,
        summary_model: Any = None,
        *,
        model: Any = None,
        max_output_tokens: int | None = None,
        ledger: Any | None = None,
        model_name: str | None = None,
        max_tokens_param: str = "max_tokens",
        prompt: str = DEFAULT_SECTION_PROMPT,
        compaction_prompt: str = DEFAULT_COMPACTION_PROMPT,
        tenant_id: str | None = None,
        feature: str | None = None,
        prompt_version: str | None = None,
        node: str | None = None,
        thread_id: str | None = None,
        run_id: str | None = None,
    ) -> None:
        if summary_model is None and model is not None and not isinstance(model, str):
            # the old spelling: model= was the chat model (model is now its name)
            summary_model = renamed_argument(
                "ChatModelSummarizer", "summary_model", None, "model", model
            )
            model = None
        name = renamed_argument("ChatModelSummarizer", "model", model, "model_name", model_name)
        if not (hasattr(summary_model, "invoke") or hasattr(summary_model, "ainvoke")):
            raise TypeError(
                f"ChatModelSummarizer needs a LangChain chat model with invoke/ainvoke, "
                f"got {type(summary_model).__name__!r}"
            )
        if max_output_tokens is None and env_str("GRAPHTHRIFT_SUMMARY_MAX_OUTPUT_TOKENS"):
            max_output_tokens = env_int("GRAPHTHRIFT_SUMMARY_MAX_OUTPUT_TOKENS", 0)
        if max_output_tokens is not None and max_output_tokens <= 0:
            raise ValueError(f"max_output_tokens must be > 0, got {max_output_tokens}")
        if ledger is not None and not hasattr(ledger, "record"):
            raise TypeError(
                f"ledger must have a record(LedgerRecord) method, got {type(ledger).__name__!r}"
            )
        self.summary_model = summary_model
        self.model = summary_model  # the earlier attribute name of ``summary_model``
        self.max_output_tokens = max_output_tokens
        self.ledger = ledger
        self.model_name: str | None = name or name_of_model(
            summary_model, getattr(summary_model, "deployment_name", None)
        )
        self.max_tokens_param = max_tokens_param
        self.prompt = prompt
        self.compaction_prompt = compaction_prompt
        self.tags = {
            "tenant_id": tenant_id,
            "feature": feature,
            "prompt_version": prompt_version,
            "node": node,
            "thread_id": thread_id,
            "run_id": run_id,
        }
        self._bound: dict[int, Any] = {}

    # One implementation for both paths: build the request, then finish from the response.
    def _request(
        self, messages: Sequence[Message], previous_summary: str, max_tokens: int
    ) -> tuple[Any, list[dict[str, str]], int]:
        check_summary_args(previous_summary, max_tokens)
        cap = (
            max_tokens
            if self.max_output_tokens is None
            else min(max_tokens, self.max_output_tokens)
        )
        cap = max(cap, 1)
        messages = to_messages(messages)
        if is_compaction(messages):
            system = self.compaction_prompt.format(max_tokens=cap)
            user = "\n\n".join(m.text for m in messages)
        else:
            system = self.prompt.format(max_tokens=cap)
            user = (
                f"Existing summary:\n{previous_summary.strip() or '(none)'}\n\n"
                f"New messages:\n{render_transcript(messages)}"
            )
        request = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        return self._runnable(cap), request, cap

    def _runnable(self, cap: int) -> Any:
        if cap not in self._bound:
            bind = getattr(self.summary_model, "bind", None)
            self._bound[cap] = (
                bind(**{self.max_tokens_param: cap}) if callable(bind) else self.summary_model
            )
        return self._bound[cap]

    @staticmethod
    def _config() -> dict[str, Any]:
        return {
            "run_name": "graphthrift_summary",
            "tags": ["graphthrift:summary"],
            "metadata": {
                "route": "summary",
                "lc_source": "summarization",
                "graphthrift_ledger_recorded": True,
            },
        }

    def _usage(self, response: Any, request: list[dict[str, str]], text: str) -> _Usage:
        meta = getattr(response, "usage_metadata", None)
        if isinstance(meta, Mapping):
            inp = plausible_tokens("input_tokens", meta.get("input_tokens"))
            out = plausible_tokens("output_tokens", meta.get("output_tokens"))
            if inp is not None and out is not None and (inp or out):
                details = meta.get("input_token_details") or {}
                cached = (
                    plausible_tokens("cached_tokens", details.get("cache_read"))
                    if isinstance(details, Mapping)
                    else None
                )
                return _Usage(inp, out, cached or 0, "provider")
        estimate_in = count_messages(request, self.model_name).tokens
        return _Usage(estimate_in, count_text(text, self.model_name), 0, "estimated")

    def _record(self, usage: _Usage | None, started: float, error: BaseException | None) -> None:
        if self.ledger is None:
            return
        tags = {k: clean_tag(k, v) for k, v in self.tags.items()}
        record = LedgerRecord(
            tenant_id=tags["tenant_id"],
            feature=tags["feature"],
            prompt_version=tags["prompt_version"],
            node=tags["node"],
            thread_id=tags["thread_id"],
            run_id=tags["run_id"],
            kind="llm",
            route="summary",
            model=self.model_name,
            input_tokens=usage.input_tokens if usage else 0,
            output_tokens=usage.output_tokens if usage else 0,
            cached_tokens=usage.cached_tokens if usage else 0,
            usage_source=usage.source if usage else "none",
            latency_ms=(time.perf_counter() - started) * 1000.0,
            success=error is None,
            error_type=None if error is None else _error_type(error),
            layer="history",
        )
        try:
            self.ledger.record(record)
        except Exception as exc:  # the ledger must never break the user's turn
            diagnostics.count(
                "ledger_record_failed", "graphthrift: summary ledger record failed: %s", exc
            )

    def _finish(self, response: Any, request: list[dict[str, str]], started: float) -> str:
        raw = getattr(response, "content", response)
        text = content_text(raw).strip() if not isinstance(raw, str) else raw.strip()
        self._record(self._usage(response, request, text), started, None)
        return text

    def summarize(self, messages: Sequence[Message], previous_summary: str, max_tokens: int) -> str:
        """Ask the model for the section covering ``messages``; record the call."""
        runnable, request, _ = self._request(messages, previous_summary, max_tokens)
        started = time.perf_counter()
        try:
            response = runnable.invoke(request, config=self._config())
        except Exception as exc:
            self._record(None, started, exc)
            raise
        return self._finish(response, request, started)

    async def asummarize(
        self, messages: Sequence[Message], previous_summary: str, max_tokens: int
    ) -> str:
        """Async twin of ``summarize``."""
        runnable, request, _ = self._request(messages, previous_summary, max_tokens)
        started = time.perf_counter()
        try:
            response = await runnable.ainvoke(request, config=self._config())
        except Exception as exc:
            self._record(None, started, exc)
            raise
        return self._finish(response, request, started)


def _error_type(error: BaseException) -> str:
    name = type(error).__name__.lower()
    if "timeout" in name:
        return "timeout"
    if "ratelimit" in name or "rate_limit" in name:
        return "rate_limit"
    if "badrequest" in name or "invalid" in name:
        return "bad_request"
    return "other"
