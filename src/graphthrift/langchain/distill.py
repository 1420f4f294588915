"""``DistillCallback``: capture a chat model's prompts and final answers for distillation.

Add it to ``config["callbacks"]`` beside ``CostTagger`` with a ``DistillCapture`` that is
enabled (capture is off by default). Each chat-model call that ends with a text answer is
handed to ``DistillCapture.capture`` with the run's tenant, feature, route and prompt
version, where the redaction hook runs before anything is written. Calls that fail, answer
with a tool call, or carry tool messages are not captured (they are no plain teacher pair).
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import BaseMessage
from langchain_core.outputs import ChatGeneration, LLMResult

from graphthrift import diagnostics
from graphthrift.kernel import run_tags
from graphthrift.ops.distill import DistillCapture

__all__ = ["DistillCallback"]

_ROLE = {"human": "user", "ai": "assistant", "system": "system"}


class DistillCallback(BaseCallbackHandler):
    """Hand each finished chat-model call's prompt and answer to a ``DistillCapture``."""

    run_inline = True
    raise_error = False

    def __init__(self, capture: DistillCapture, **default_tags: Any) -> None:
        super().__init__()
        self.capture = capture
        self.default_tags = default_tags
        self._pending: dict[UUID, tuple[list[dict[str, str]], dict[str, Any], str | None]] = {}

    def on_chat_model_start(
        self,
        serialized: Any,
        messages: list[list[BaseMessage]],
        *,
        run_id: UUID,
        metadata: dict[str, Any] | None = None,
        invocation_params: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if not self.capture.enabled or not messages:
            return
        prompt: list[dict[str, str]] = []
        for message in messages[0]:
            role = _ROLE.get(message.type)
            if role is None or getattr(message, "tool_calls", None):
                return  # tool traffic is not a plain teacher pair
            prompt.append({"role": role, "content": message.text})
        meta = metadata or {}
        model = meta.get("ls_model_name") or (invocation_params or {}).get("model")
        tags = run_tags({"metadata": meta}, **self.default_tags)
        self._pending[run_id] = (prompt, tags, model if isinstance(model, str) else None)

    def on_llm_end(self, response: LLMResult, *, run_id: UUID, **kwargs: Any) -> None:
        pending = self._pending.pop(run_id, None)
        if pending is None or not response.generations or not response.generations[0]:
            return
        prompt, tags, model = pending
        generation = response.generations[0][0]
        if isinstance(generation, ChatGeneration) and getattr(
            generation.message, "tool_calls", None
        ):
            return
        answer = generation.text
        if not answer:
            return
        try:
            self.capture.capture(
                prompt,
                answer,
                model=model,
                tenant_id=tags.get("tenant_id"),
                feature=tags.get("feature"),
                route=tags.get("route"),
                prompt_version=tags.get("prompt_version"),
            )
        except Exception as exc:  # capture must never break the user's call
            diagnostics.count(
                "distill_capture_failure", "graphthrift: distillation capture failed: %r", exc
            )

    def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._pending.pop(run_id, None)
