"""A local HTTP server that speaks the providers' wire formats, for the real client classes.

``WireServer`` runs pytest-httpserver (werkzeug) on 127.0.0.1 and answers:

- ``POST /v1/chat/completions``: OpenAI Chat Completions, JSON or SSE (``stream_options.
  include_usage`` adds the usage chunk with ``choices: []`` before ``data: [DONE]``);
- ``POST /v1/responses``: the OpenAI Responses API, JSON or its typed SSE events;
- ``POST /v1/messages``: Anthropic Messages, JSON or SSE, input usage in ``message_start``
  and output usage in ``message_delta``;
- the Batch APIs: OpenAI ``/v1/files`` + ``/v1/batches`` (output and error files, expired
  and failed batches) and Anthropic Message Batches (``/v1/messages/batches``, JSONL
  results with succeeded, errored and expired entries), scripted with ``batch_script``.

The payloads follow the providers' API references field for field. A test queues what the
next calls answer with ``reply(...)`` (usage, text, a tool call, an error, a stall, a cut
stream); with nothing queued the server answers a plain default reply. Every request body
is kept in ``requests`` so tests assert on what the client really sent.

Clients reach it through their documented base URL settings:
``ChatOpenAI(base_url=wire.openai_url)``, ``ChatAnthropic(base_url=wire.anthropic_url)``,
LlamaIndex ``OpenAI(api_base=wire.openai_url)``; pass ``max_retries=0`` to see one call.
"""

from __future__ import annotations

import json
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

CREATED = 1_741_569_952


@dataclass
class Reply:
    """What one call answers.

    Token counts follow the OpenAI convention: ``input_tokens`` is the whole prompt, of
    which ``cached_tokens`` were read from the prompt cache and ``cache_write_5m`` /
    ``cache_write_1h`` written to it (Anthropic's wire format reports those outside
    ``input_tokens``; the server does the subtraction). ``output_tokens`` includes
    ``reasoning_tokens``.

    Bad cases: ``status`` (an HTTP error with the provider's error body, ``retry_after``
    header for 429), ``stall`` (a stream that sends its first event and then waits
    ``stall`` seconds), ``truncate`` (a stream cut before its usage and end events),
    ``usage=False`` (no usage block), ``model`` naming an unknown model, or raw usage
    overrides in ``usage_override`` (e.g. negative counts).
    """

    text: str = "Hello from the wire."
    model: str | None = None
    input_tokens: int = 42
    output_tokens: int = 9
    cached_tokens: int = 0
    cache_write_5m: int = 0
    cache_write_1h: int = 0
    reasoning_tokens: int = 0
    tool_call: tuple[str, dict[str, Any]] | None = None
    status: int | None = None
    retry_after: str | None = None
    stall: float = 0.0
    truncate: bool = False
    usage: bool = True
    usage_override: dict[str, Any] | None = None
    #: Anthropic ``message_delta`` usage: "minimal" (output_tokens only, as the streaming
    #: guide's example) or "cumulative" (all counts, as the API reference allows).
    delta_usage: str = "cumulative"


@dataclass
class Captured:
    """One request the server received."""

    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    method: str = "POST"


@dataclass
class WireServer:
    """The server, its queued replies and the requests it saw."""

    http: HTTPServer = field(
        default_factory=lambda: HTTPServer(host="127.0.0.1", port=0, threaded=True)
    )
    queue: deque[Reply] = field(default_factory=deque)
    #: the answer when nothing is queued
    default: Reply = field(default_factory=Reply)
    requests: list[Captured] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stopping: threading.Event = field(default_factory=threading.Event)
    #: Batch APIs: scripts for the next batches, uploaded files, created batches
    batch_scripts: deque[BatchScript] = field(default_factory=deque)
    files: dict[str, bytes] = field(default_factory=dict)
    batches: dict[str, _Batch] = field(default_factory=dict)

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> WireServer:
        self.http.expect_request("/v1/chat/completions", method="POST").respond_with_handler(
            self._chat
        )
        self.http.expect_request("/v1/responses", method="POST").respond_with_handler(
            self._responses
        )
        self.http.expect_request("/v1/messages", method="POST").respond_with_handler(self._messages)
        self._start_batches()
        self.http.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self.http.is_running():
            self.http.clear()
            self.http.stop()

    def reset(self) -> None:
        """Forget queued replies and captured requests (between tests)."""
        with self._lock:
            self.queue.clear()
            self.requests.clear()
            self.batch_scripts.clear()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http.port}"

    @property
    def openai_url(self) -> str:
        """``base_url`` for the OpenAI clients (they append ``/chat/completions``)."""
        return f"{self.url}/v1"

    @property
    def anthropic_url(self) -> str:
        """``base_url`` for the Anthropic client (it appends ``/v1/messages``)."""
        return self.url

    # -- scripting -------------------------------------------------------------------------

    def reply(self, **fields: Any) -> Reply:
        """Queue the answer to the next call (FIFO); returns it."""
        answer = Reply(**fields)
        with self._lock:
            self.queue.append(answer)
        return answer

    def bodies(self, path: str | None = None) -> list[dict[str, Any]]:
        """The JSON bodies received, optionally only those sent to ``path``."""
        with self._lock:
            return [c.body for c in self.requests if path is None or c.path == path]

    def _take(self, request: Request) -> tuple[Reply, dict[str, Any]]:
        body = json.loads(request.get_data() or b"{}")
        with self._lock:
            self.requests.append(Captured(request.path, dict(request.headers), body))
            answer = self.queue.popleft() if self.queue else self.default
        return answer, body

    # -- OpenAI Chat Completions -----------------------------------------------------------

    def _chat(self, request: Request) -> Response:
        r, body = self._take(request)
        if r.status:
            return _openai_error(r)
        model = r.model or body.get("model", "gpt-4o-mini")
        usage = _openai_chat_usage(r) if r.usage else None
        if not body.get("stream"):
            message: dict[str, Any] = {
                "role": "assistant",
                "content": None if r.tool_call else r.text,
                "refusal": None,
                "annotations": [],
            }
            if r.tool_call:
                name, args = r.tool_call
                message["tool_calls"] = [
                    {
                        "id": "call_wire0001",
                        "type": "function",
                        "function": {"name": name, "arguments": json.dumps(args)},
                    }
                ]
            payload: dict[str, Any] = {
                "id": "chatcmpl-wire0001",
                "object": "chat.completion",
                "created": CREATED,
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": message,
                        "logprobs": None,
                        "finish_reason": "tool_calls" if r.tool_call else "stop",
                    }
                ],
                "service_tier": "default",
                "system_fingerprint": "fp_wire",
            }
            if usage is not None:
                payload["usage"] = usage
            return Response(json.dumps(payload), status=200, content_type="application/json")
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        def chunk(delta: dict[str, Any], finish: str | None, **extra: Any) -> dict[str, Any]:
            data = {
                "id": "chatcmpl-wire0001",
                "object": "chat.completion.chunk",
                "created": CREATED,
                "model": model,
                "system_fingerprint": "fp_wire",
                "choices": [
                    {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
                ],
            }
            if include_usage:
                data["usage"] = None
            data.update(extra)
            return data

        def events() -> Iterator[str]:
            yield _sse(chunk({"role": "assistant", "content": "", "refusal": None}, None))
            if r.stall:
                self._sleep(r.stall)
                return
            if r.tool_call:
                name, args = r.tool_call
                call = {
                    "index": 0,
                    "id": "call_wire0001",
                    "type": "function",
                    "function": {"name": name, "arguments": ""},
                }
                yield _sse(chunk({"tool_calls": [call]}, None))
                arguments = json.dumps(args)
                yield _sse(
                    chunk(
                        {"tool_calls": [{"index": 0, "function": {"arguments": arguments}}]}, None
                    )
                )
            else:
                for piece in _pieces(r.text):
                    yield _sse(chunk({"content": piece}, None))
            if r.truncate:
                return
            yield _sse(chunk({}, "tool_calls" if r.tool_call else "stop"))
            if include_usage and usage is not None:
                final = chunk({}, None, usage=usage)
                final["choices"] = []
                yield _sse(final)
            yield "data: [DONE]\n\n"

        return _stream(events())

    # -- OpenAI Responses API --------------------------------------------------------------

    def _responses(self, request: Request) -> Response:
        r, body = self._take(request)
        if r.status:
            return _openai_error(r)
        model = r.model or body.get("model", "gpt-4o-mini")
        output: list[dict[str, Any]] = []
        if r.reasoning_tokens:
            output.append({"type": "reasoning", "id": "rs_wire0001", "summary": []})
        if r.tool_call:
            name, args = r.tool_call
            output.append(
                {
                    "type": "function_call",
                    "id": "fc_wire0001",
                    "call_id": "call_wire0001",
                    "name": name,
                    "arguments": json.dumps(args),
                    "status": "completed",
                }
            )
        else:
            output.append(_responses_message(r.text, "completed"))
        response: dict[str, Any] = {
            "id": "resp_wire0001",
            "object": "response",
            "created_at": CREATED,
            "status": "completed",
            "error": None,
            "incomplete_details": None,
            "instructions": None,
            "max_output_tokens": body.get("max_output_tokens"),
            "model": model,
            "output": output,
            "parallel_tool_calls": True,
            "previous_response_id": None,
            "reasoning": {"effort": None, "summary": None},
            "store": True,
            "temperature": 1.0,
            "text": {"format": {"type": "text"}},
            "tool_choice": "auto",
            "tools": [],
            "top_p": 1.0,
            "truncation": "disabled",
            "usage": _responses_usage(r) if r.usage else None,
            "user": None,
            "metadata": {},
        }
        if not body.get("stream"):
            return Response(json.dumps(response), status=200, content_type="application/json")

        def events() -> Iterator[str]:
            seq = iter(range(1_000))
            started = {**response, "status": "in_progress", "output": [], "usage": None}
            yield _sse_event(
                "response.created",
                {"type": "response.created", "sequence_number": next(seq), "response": started},
            )
            yield _sse_event(
                "response.in_progress",
                {"type": "response.in_progress", "sequence_number": next(seq), "response": started},
            )
            if r.stall:
                self._sleep(r.stall)
                return
            for index, item in enumerate(output):
                if item["type"] != "message":
                    for kind in ("response.output_item.added", "response.output_item.done"):
                        yield _sse_event(
                            kind,
                            {
                                "type": kind,
                                "sequence_number": next(seq),
                                "output_index": index,
                                "item": item,
                            },
                        )
                    continue
                opened = _responses_message("", "in_progress")
                opened["content"] = []
                yield _sse_event(
                    "response.output_item.added",
                    {
                        "type": "response.output_item.added",
                        "sequence_number": next(seq),
                        "output_index": index,
                        "item": opened,
                    },
                )
                part = {"type": "output_text", "text": "", "annotations": []}
                where = {"item_id": item["id"], "output_index": index, "content_index": 0}
                yield _sse_event(
                    "response.content_part.added",
                    {
                        "type": "response.content_part.added",
                        "sequence_number": next(seq),
                        **where,
                        "part": part,
                    },
                )
                for piece in _pieces(r.text):
                    yield _sse_event(
                        "response.output_text.delta",
                        {
                            "type": "response.output_text.delta",
                            "sequence_number": next(seq),
                            **where,
                            "delta": piece,
                            "logprobs": [],
                        },
                    )
                if r.truncate:
                    return
                yield _sse_event(
                    "response.output_text.done",
                    {
                        "type": "response.output_text.done",
                        "sequence_number": next(seq),
                        **where,
                        "text": r.text,
                        "logprobs": [],
                    },
                )
                yield _sse_event(
                    "response.content_part.done",
                    {
                        "type": "response.content_part.done",
                        "sequence_number": next(seq),
                        **where,
                        "part": {**part, "text": r.text},
                    },
                )
                yield _sse_event(
                    "response.output_item.done",
                    {
                        "type": "response.output_item.done",
                        "sequence_number": next(seq),
                        "output_index": index,
                        "item": item,
                    },
                )
            yield _sse_event(
                "response.completed",
                {"type": "response.completed", "sequence_number": next(seq), "response": response},
            )

        return _stream(events())

    # -- Anthropic Messages ----------------------------------------------------------------

    def _messages(self, request: Request) -> Response:
        r, body = self._take(request)
        if r.status:
            return _anthropic_error(r)
        model = r.model or body.get("model", "claude-haiku-4-5")
        content: list[dict[str, Any]] = []
        if r.tool_call:
            name, args = r.tool_call
            content.append(
                {"type": "tool_use", "id": "toolu_wire0001", "name": name, "input": args}
            )
        else:
            content.append({"type": "text", "text": r.text})
        stop_reason = "tool_use" if r.tool_call else "end_turn"
        usage = _anthropic_usage(r)
        if not body.get("stream"):
            payload: dict[str, Any] = {
                "id": "msg_wire0001",
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": content,
                "stop_reason": stop_reason,
                "stop_sequence": None,
            }
            if r.usage:
                payload["usage"] = usage
            return Response(json.dumps(payload), status=200, content_type="application/json")

        def events() -> Iterator[str]:
            start_usage = {**usage, "output_tokens": 1}
            message = {
                "id": "msg_wire0001",
                "type": "message",
                "role": "assistant",
                "content": [],
                "model": model,
                "stop_reason": None,
                "stop_sequence": None,
                "usage": start_usage if r.usage else None,
            }
            yield _sse_event("message_start", {"type": "message_start", "message": message})
            if r.stall:
                self._sleep(r.stall)
                return
            block: dict[str, Any]
            if r.tool_call:
                name, args = r.tool_call
                block = {"type": "tool_use", "id": "toolu_wire0001", "name": name, "input": {}}
                deltas = [{"type": "input_json_delta", "partial_json": json.dumps(args)}]
            else:
                block = {"type": "text", "text": ""}
                deltas = [{"type": "text_delta", "text": piece} for piece in _pieces(r.text)]
            yield _sse_event(
                "content_block_start",
                {"type": "content_block_start", "index": 0, "content_block": block},
            )
            yield _sse_event("ping", {"type": "ping"})
            for delta in deltas:
                yield _sse_event(
                    "content_block_delta",
                    {"type": "content_block_delta", "index": 0, "delta": delta},
                )
            if r.truncate:
                return
            yield _sse_event("content_block_stop", {"type": "content_block_stop", "index": 0})
            delta_usage: dict[str, Any] = (
                {"output_tokens": usage["output_tokens"]}
                if r.delta_usage == "minimal"
                else {k: v for k, v in usage.items() if k not in ("cache_creation", "service_tier")}
            )
            delta_event: dict[str, Any] = {
                "type": "message_delta",
                "delta": {"stop_reason": stop_reason, "stop_sequence": None},
            }
            if r.usage:
                delta_event["usage"] = delta_usage
            yield _sse_event("message_delta", delta_event)
            yield _sse_event("message_stop", {"type": "message_stop"})

        return _stream(events())

    # -- Batch APIs: OpenAI /v1/files + /v1/batches, Anthropic Message Batches -------------

    def batch_script(self, **fields: Any) -> BatchScript:
        """Queue how the next created batch (either provider) behaves (FIFO); returns it."""
        script = BatchScript(**fields)
        with self._lock:
            self.batch_scripts.append(script)
        return script

    def batch_requests(self, provider: str = "openai") -> list[Captured]:
        """The batch-creating requests received (``POST /v1/batches`` or Anthropic's)."""
        path = "/v1/batches" if provider == "openai" else "/v1/messages/batches"
        with self._lock:
            return [c for c in self.requests if c.path == path and c.method == "POST"]

    def _start_batches(self) -> None:
        import re

        self.http.expect_request("/v1/files", method="POST").respond_with_handler(self._file_upload)
        self.http.expect_request(
            re.compile(r"^/v1/files/[^/]+/content$"), method="GET"
        ).respond_with_handler(self._file_content)
        self.http.expect_request("/v1/batches", method="POST").respond_with_handler(
            self._openai_batch_create
        )
        self.http.expect_request("/v1/batches", method="GET").respond_with_handler(
            self._openai_batch_list
        )
        self.http.expect_request(
            re.compile(r"^/v1/batches/[^/]+$"), method="GET"
        ).respond_with_handler(self._openai_batch_get)
        self.http.expect_request("/v1/messages/batches", method="POST").respond_with_handler(
            self._anthropic_batch_create
        )
        self.http.expect_request(
            re.compile(r"^/v1/messages/batches/[^/]+/results$"), method="GET"
        ).respond_with_handler(self._anthropic_batch_results)
        self.http.expect_request(
            re.compile(r"^/v1/messages/batches/[^/]+$"), method="GET"
        ).respond_with_handler(self._anthropic_batch_get)

    def _capture(self, request: Request, body: dict[str, Any]) -> None:
        with self._lock:
            self.requests.append(
                Captured(request.path, dict(request.headers), body, method=request.method)
            )

    def _new_batch(
        self, provider: str, lines: list[dict[str, Any]], meta: dict[str, Any]
    ) -> _Batch:
        with self._lock:
            script = self.batch_scripts.popleft() if self.batch_scripts else BatchScript()
            batch_id = (
                f"{'batch' if provider == 'openai' else 'msgbatch'}_wire{len(self.batches):04d}"
            )
            batch = _Batch(batch_id, provider, lines, script, meta)
            self.batches[batch_id] = batch
        return batch

    def _advance(self, batch: _Batch) -> None:
        """One poll: the batch stays in progress ``script.polls`` times, then ends."""
        with self._lock:
            if batch.ended:
                return
            if batch.polled < batch.script.polls or batch.script.hold:
                batch.polled += 1
                return
            batch.ended = True
        for line in batch.lines:
            custom_id = line["custom_id"]
            if custom_id in batch.script.expire:
                batch.results[custom_id] = ("expired", None)
            elif custom_id in batch.script.fail:
                batch.results[custom_id] = ("error", batch.script.fail[custom_id])
            else:
                with self._lock:
                    answer = self.queue.popleft() if self.queue else self.default
                if batch.script.echo:
                    answer = replace(answer, text=f"echo: {_last_text(line['body'])}")
                batch.results[custom_id] = ("ok", answer)

    # OpenAI files and batches

    def _file_upload(self, request: Request) -> Response:
        upload = request.files["file"]
        content = upload.read()
        with self._lock:
            file_id = f"file-wire{len(self.files):04d}"
            self.files[file_id] = content
        self._capture(
            request,
            {"purpose": request.form.get("purpose"), "filename": upload.filename, "id": file_id},
        )
        return _json(
            {
                "id": file_id,
                "object": "file",
                "bytes": len(content),
                "created_at": CREATED,
                "filename": upload.filename or "upload.jsonl",
                "purpose": request.form.get("purpose", "batch"),
                "status": "processed",
                "status_details": None,
                "expires_at": None,
            }
        )

    def _file_content(self, request: Request) -> Response:
        file_id = request.path.split("/")[3]
        self._capture(request, {"id": file_id})
        with self._lock:
            content = self.files.get(file_id)
        if content is None:
            return _openai_error(Reply(status=404))
        return Response(content, status=200, content_type="application/octet-stream")

    def _openai_batch_create(self, request: Request) -> Response:
        body = json.loads(request.get_data() or b"{}")
        self._capture(request, body)
        with self._lock:
            content = self.files.get(body.get("input_file_id", ""))
        if content is None:
            return _openai_error(Reply(status=400))
        lines = [json.loads(line) for line in content.decode().splitlines() if line.strip()]
        batch = self._new_batch("openai", lines, {**body, "metadata": body.get("metadata")})
        return _json(self._openai_batch_object(batch))

    def _openai_batch_get(self, request: Request) -> Response:
        batch_id = request.path.rsplit("/", 1)[1]
        self._capture(request, {"id": batch_id})
        batch = self.batches.get(batch_id)
        if batch is None or batch.provider != "openai":
            return _openai_error(Reply(status=404))
        self._advance(batch)
        return _json(self._openai_batch_object(batch))

    def _openai_batch_list(self, request: Request) -> Response:
        self._capture(request, {})
        with self._lock:
            found = [b for b in self.batches.values() if b.provider == "openai"]
        data = [self._openai_batch_object(b) for b in reversed(found)]
        return _json(
            {
                "object": "list",
                "data": data,
                "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None,
                "has_more": False,
            }
        )

    def _openai_batch_object(self, batch: _Batch) -> dict[str, Any]:
        script = batch.script
        total = len(batch.lines)
        status = "in_progress"
        output_id = error_id = None
        failed = sum(1 for kind, _ in batch.results.values() if kind != "ok")
        if batch.ended:
            status = script.status or ("expired" if script.expire else "completed")
            if status == "failed":
                failed = total
            else:
                output_id, error_id = self._openai_batch_files(batch)
        return {
            "id": batch.id,
            "object": "batch",
            "endpoint": batch.meta.get("endpoint", "/v1/chat/completions"),
            "errors": (
                {
                    "object": "list",
                    "data": [{"code": "invalid_json_line", "message": "Invalid JSON line."}],
                }
                if status == "failed"
                else None
            ),
            "input_file_id": batch.meta.get("input_file_id"),
            "completion_window": batch.meta.get("completion_window", "24h"),
            "status": status,
            "output_file_id": output_id,
            "error_file_id": error_id,
            "created_at": CREATED,
            "in_progress_at": CREATED + 1,
            "expires_at": CREATED + 86_400,
            "finalizing_at": None,
            "completed_at": CREATED + 60 if status == "completed" else None,
            "failed_at": CREATED + 60 if status == "failed" else None,
            "expired_at": CREATED + 86_400 if status == "expired" else None,
            "cancelling_at": None,
            "cancelled_at": CREATED + 60 if status == "cancelled" else None,
            "request_counts": {
                "total": total,
                "completed": (total - failed) if batch.ended and status != "failed" else 0,
                "failed": failed,
            },
            "metadata": batch.meta.get("metadata"),
        }

    def _openai_batch_files(self, batch: _Batch) -> tuple[str | None, str | None]:
        """Write the output and error files once; OpenAI leaves a file id null when empty."""
        with self._lock:
            if batch.files is not None:
                return batch.files
        ok_lines: list[str] = []
        error_lines: list[str] = []
        for n, line in enumerate(batch.lines):
            kind, value = batch.results[line["custom_id"]]
            request_id = f"req_wire{n:05d}"
            base = {"id": f"batch_req_wire{n:05d}", "custom_id": line["custom_id"]}
            if kind == "ok":
                model = value.model or line["body"].get("model", "gpt-4o-mini")
                response = {
                    "status_code": 200,
                    "request_id": request_id,
                    "body": _batch_chat_completion(value, model, n),
                }
                ok_lines.append(json.dumps({**base, "response": response, "error": None}))
            elif kind == "expired":
                error = {
                    "code": "batch_expired",
                    "message": "This request could not be executed before the completion window expired.",
                }
                error_lines.append(json.dumps({**base, "response": None, "error": error}))
            else:
                err = _openai_error(Reply(status=value))
                response = {
                    "status_code": value,
                    "request_id": request_id,
                    "body": json.loads(err.get_data()),
                }
                error_lines.append(json.dumps({**base, "response": response, "error": None}))
        ids: list[str | None] = []
        with self._lock:
            for lines in (ok_lines, error_lines):
                if not lines:
                    ids.append(None)
                    continue
                file_id = f"file-wire{len(self.files):04d}"
                self.files[file_id] = ("\n".join(lines) + "\n").encode()
                ids.append(file_id)
            batch.files = (ids[0], ids[1])
            return batch.files

    # Anthropic Message Batches

    def _anthropic_batch_create(self, request: Request) -> Response:
        body = json.loads(request.get_data() or b"{}")
        self._capture(request, body)
        lines = [
            {"custom_id": item["custom_id"], "body": item["params"]}
            for item in body.get("requests", [])
        ]
        batch = self._new_batch("anthropic", lines, {})
        return _json(self._anthropic_batch_object(batch))

    def _anthropic_batch_get(self, request: Request) -> Response:
        batch_id = request.path.rsplit("/", 1)[1]
        self._capture(request, {"id": batch_id})
        batch = self.batches.get(batch_id)
        if batch is None or batch.provider != "anthropic":
            return _anthropic_error(Reply(status=404))
        self._advance(batch)
        return _json(self._anthropic_batch_object(batch))

    def _anthropic_batch_results(self, request: Request) -> Response:
        batch_id = request.path.split("/")[4]
        self._capture(request, {"id": batch_id})
        batch = self.batches.get(batch_id)
        if batch is None or not batch.ended:
            return _anthropic_error(Reply(status=404))
        out: list[str] = []
        for n, line in enumerate(batch.lines):
            kind, value = batch.results[line["custom_id"]]
            result: dict[str, Any]
            if kind == "ok":
                model = value.model or line["body"].get("model", "claude-haiku-4-5")
                result = {"type": "succeeded", "message": _batch_message(value, model, n)}
            elif kind == "expired":
                result = {"type": "expired"}
            else:
                result = {
                    "type": "errored",
                    "error": json.loads(_anthropic_error(Reply(status=value)).get_data()),
                }
            out.append(json.dumps({"custom_id": line["custom_id"], "result": result}))
        return Response(
            ("\n".join(out) + "\n").encode(), status=200, content_type="application/binary"
        )

    def _anthropic_batch_object(self, batch: _Batch) -> dict[str, Any]:
        total = len(batch.lines)
        counts = {"processing": total, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
        if batch.ended:
            counts["processing"] = 0
            for kind, _ in batch.results.values():
                key = {"ok": "succeeded", "expired": "expired"}.get(kind, "errored")
                counts[key] += 1
        return {
            "id": batch.id,
            "type": "message_batch",
            "processing_status": "ended" if batch.ended else "in_progress",
            "request_counts": counts,
            "ended_at": "2026-11-30T10:01:00Z" if batch.ended else None,
            "created_at": "2026-11-30T10:00:00Z",
            "expires_at": "2026-12-01T10:00:00Z",
            "archived_at": None,
            "cancel_initiated_at": None,
            "results_url": f"{self.url}/v1/messages/batches/{batch.id}/results"
            if batch.ended
            else None,
        }

    def _sleep(self, seconds: float) -> None:
        """Stall a stream, but let the server stop promptly."""
        self._stopping.wait(seconds)


# -- payload pieces ------------------------------------------------------------------------


def _pieces(text: str) -> list[str]:
    words = text.split(" ")
    return [w if i == 0 else f" {w}" for i, w in enumerate(words)]


def _sse(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data)}\n\n"


def _sse_event(event: str, data: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"


def _stream(events: Iterator[str]) -> Response:
    return Response(
        (e.encode() for e in events),
        status=200,
        headers={"Cache-Control": "no-cache"},
        content_type="text/event-stream; charset=utf-8",
    )


def _openai_chat_usage(r: Reply) -> dict[str, Any]:
    usage: dict[str, Any] = {
        "prompt_tokens": r.input_tokens,
        "completion_tokens": r.output_tokens,
        "total_tokens": r.input_tokens + r.output_tokens,
        "prompt_tokens_details": {"cached_tokens": r.cached_tokens, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": r.reasoning_tokens,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }
    usage.update(r.usage_override or {})
    return usage


def _responses_usage(r: Reply) -> dict[str, Any]:
    usage: dict[str, Any] = {
        "input_tokens": r.input_tokens,
        "input_tokens_details": {"cached_tokens": r.cached_tokens},
        "output_tokens": r.output_tokens,
        "output_tokens_details": {"reasoning_tokens": r.reasoning_tokens},
        "total_tokens": r.input_tokens + r.output_tokens,
    }
    usage.update(r.usage_override or {})
    return usage


def _anthropic_usage(r: Reply) -> dict[str, Any]:
    written = r.cache_write_5m + r.cache_write_1h
    usage: dict[str, Any] = {
        "input_tokens": r.input_tokens - r.cached_tokens - written,
        "cache_creation_input_tokens": written,
        "cache_read_input_tokens": r.cached_tokens,
        "cache_creation": {
            "ephemeral_5m_input_tokens": r.cache_write_5m,
            "ephemeral_1h_input_tokens": r.cache_write_1h,
        },
        "output_tokens": r.output_tokens,
        "service_tier": "standard",
    }
    usage.update(r.usage_override or {})
    return usage


def _responses_message(text: str, status: str) -> dict[str, Any]:
    return {
        "type": "message",
        "id": "msg_wire0001",
        "status": status,
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": []}],
    }


_OPENAI_ERRORS = {
    400: ("invalid_request_error", None, "Invalid value for 'messages'."),
    429: ("requests", "rate_limit_exceeded", "Rate limit reached for requests."),
    500: ("server_error", None, "The server had an error while processing your request."),
    503: ("server_error", None, "The engine is currently overloaded."),
}
_ANTHROPIC_ERRORS = {
    400: ("invalid_request_error", "messages: at least one message is required"),
    429: ("rate_limit_error", "Number of request tokens has exceeded your rate limit."),
    500: ("api_error", "Internal server error"),
    529: ("overloaded_error", "Overloaded"),
}


def _headers(r: Reply) -> dict[str, str]:
    return {"retry-after": r.retry_after} if r.retry_after else {}


def _openai_error(r: Reply) -> Response:
    status = r.status or 500
    kind, code, message = _OPENAI_ERRORS.get(status, ("server_error", None, "Error"))
    body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    return Response(
        json.dumps(body), status=status, headers=_headers(r), content_type="application/json"
    )


def _anthropic_error(r: Reply) -> Response:
    status = r.status or 500
    kind, message = _ANTHROPIC_ERRORS.get(status, ("api_error", "Error"))
    body = {
        "type": "error",
        "error": {"type": kind, "message": message},
        "request_id": "req_wire0001",
    }
    return Response(
        json.dumps(body), status=status, headers=_headers(r), content_type="application/json"
    )


# -- Batch API scripting and payloads -------------------------------------------------------


@dataclass
class BatchScript:
    """How one created batch behaves.

    ``polls``: how many status reads answer "in progress" before it ends; ``hold``: never
    end (a job left running, for restart tests); ``fail``: custom_id -> HTTP status of that
    request's error; ``expire``: custom_ids the completion window ran out on (the OpenAI
    batch then ends ``expired``); ``status``: force OpenAI's final status (``failed``,
    ``cancelled``). Succeeding requests take the queued ``Reply`` objects, else the default;
    ``echo`` makes each answer ``"echo: <the request's last message text>"``, so tests can
    check that every caller got the answer to its own request.
    """

    polls: int = 0
    echo: bool = False
    hold: bool = False
    fail: dict[str, int] = field(default_factory=dict)
    expire: set[str] = field(default_factory=set)
    status: str | None = None


@dataclass
class _Batch:
    id: str
    provider: str
    lines: list[dict[str, Any]]
    script: BatchScript
    meta: dict[str, Any]
    polled: int = 0
    ended: bool = False
    results: dict[str, tuple[str, Any]] = field(default_factory=dict)
    files: tuple[str | None, str | None] | None = None


def _json(payload: dict[str, Any]) -> Response:
    return Response(json.dumps(payload), status=200, content_type="application/json")


def _batch_chat_completion(r: Reply, model: str, n: int) -> dict[str, Any]:
    """A Chat Completions body as the Batch API returns it in the output file."""
    payload: dict[str, Any] = {
        "id": f"chatcmpl-wireb{n:05d}",
        "object": "chat.completion",
        "created": CREATED,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": r.text,
                    "refusal": None,
                    "annotations": [],
                },
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "service_tier": "default",
        "system_fingerprint": "fp_wire",
    }
    if r.usage:
        payload["usage"] = _openai_chat_usage(r)
    return payload


def _batch_message(r: Reply, model: str, n: int) -> dict[str, Any]:
    """An Anthropic Message as a Message Batch result carries it."""
    payload: dict[str, Any] = {
        "id": f"msg_wireb{n:05d}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": r.text}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": _anthropic_usage(r),
    }
    usage = payload["usage"]
    usage["service_tier"] = "batch"
    return payload


def _last_text(body: dict[str, Any]) -> str:
    """The text of a request's last message (a string or a list of text blocks)."""
    content = (body.get("messages") or [{}])[-1].get("content", "")
    if isinstance(content, list):
        return " ".join(str(b.get("text", "")) for b in content if isinstance(b, dict))
    return str(content)
