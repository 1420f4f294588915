"""A local OpenAI Batch API (``/v1/files`` + ``/v1/batches``) for ``bench ops``.

Served over real HTTP by ``pytest_httpserver.HTTPServer`` (a dev dependency; the bench
skips the batch figures without it), so ``BatchChatModel`` drives the real ``openai``
client. Each batch stays in progress while ``hold`` is set, then answers every line with
a fixed-usage chat completion. ``submissions`` counts ``POST /v1/batches``.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from typing import Any

CREATED = 1_760_000_000


class BatchServer:
    """The OpenAI files and batches endpoints, enough for one bench job."""

    def __init__(self, input_tokens: int = 42, output_tokens: int = 9) -> None:
        from pytest_httpserver import HTTPServer

        self.http = HTTPServer(host="127.0.0.1", port=0)
        self.usage = (input_tokens, output_tokens)
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self.submissions = 0
        self.hold = False
        self._lock = threading.Lock()

    @property
    def openai_url(self) -> str:
        return self.http.url_for("/v1")

    def start(self) -> BatchServer:
        h = self.http
        h.expect_request("/v1/files", method="POST").respond_with_handler(self._upload)
        h.expect_request(
            re.compile(r"^/v1/files/[^/]+/content$"), method="GET"
        ).respond_with_handler(self._content)
        h.expect_request("/v1/batches", method="POST").respond_with_handler(self._create)
        h.expect_request("/v1/batches", method="GET").respond_with_handler(self._list)
        h.expect_request(re.compile(r"^/v1/batches/[^/]+$"), method="GET").respond_with_handler(
            self._get
        )
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per poll in the bench
        h.start()
        return self

    def stop(self) -> None:
        if self.http.is_running():
            self.http.stop()

    # -- handlers ------------------------------------------------------------------------

    @staticmethod
    def _json(payload: Any, status: int = 200) -> Any:
        from werkzeug import Response

        return Response(json.dumps(payload), status=status, content_type="application/json")

    def _new_file(self, content: bytes) -> str:
        with self._lock:
            file_id = f"file-bench{len(self.files):04d}"
            self.files[file_id] = content
        return file_id

    def _upload(self, request: Any) -> Any:
        upload = request.files["file"]
        content = upload.read()
        file_id = self._new_file(content)
        return self._json(
            {
                "id": file_id,
                "object": "file",
                "bytes": len(content),
                "created_at": CREATED,
                "filename": upload.filename or "upload.jsonl",
                "purpose": request.form.get("purpose", "batch"),
                "status": "processed",
            }
        )

    def _content(self, request: Any) -> Any:
        from werkzeug import Response

        content = self.files.get(request.path.split("/")[3])
        if content is None:
            return self._json({"error": {"message": "no such file"}}, 404)
        return Response(content, status=200, content_type="application/octet-stream")

    def _create(self, request: Any) -> Any:
        body = json.loads(request.get_data() or b"{}")
        content = self.files.get(body.get("input_file_id", ""))
        if content is None:
            return self._json({"error": {"message": "no such input file"}}, 400)
        lines = [json.loads(x) for x in content.decode().splitlines() if x.strip()]
        with self._lock:
            self.submissions += 1
            batch_id = f"batch_bench{len(self.batches):04d}"
            self.batches[batch_id] = {"id": batch_id, "lines": lines, "meta": body, "out": None}
        return self._json(self._object(self.batches[batch_id]))

    def _get(self, request: Any) -> Any:
        batch = self.batches.get(request.path.rsplit("/", 1)[1])
        if batch is None:
            return self._json({"error": {"message": "no such batch"}}, 404)
        return self._json(self._object(batch))

    def _list(self, request: Any) -> Any:
        data = [self._object(b) for b in reversed(list(self.batches.values()))]
        return self._json({"object": "list", "data": data, "has_more": False})

    def _output(self, batch: dict[str, Any]) -> str:
        if batch["out"] is None:
            inp, out = self.usage
            lines = []
            for n, line in enumerate(batch["lines"]):
                completion = {
                    "id": f"chatcmpl-bench{n:05d}",
                    "object": "chat.completion",
                    "created": CREATED,
                    "model": line["body"].get("model", "gpt-4o-mini"),
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": f"answer {n}"},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": {
                        "prompt_tokens": inp,
                        "completion_tokens": out,
                        "total_tokens": inp + out,
                    },
                }
                response = {"status_code": 200, "request_id": f"req{n}", "body": completion}
                lines.append(
                    json.dumps(
                        {"id": f"br{n}", "custom_id": line["custom_id"], "response": response,
                         "error": None}
                    )
                )  # fmt: skip
            batch["out"] = self._new_file(("\n".join(lines) + "\n").encode())
        return str(batch["out"])

    def _object(self, batch: dict[str, Any]) -> dict[str, Any]:
        total = len(batch["lines"])
        done = not self.hold
        return {
            "id": batch["id"],
            "object": "batch",
            "endpoint": batch["meta"].get("endpoint", "/v1/chat/completions"),
            "errors": None,
            "input_file_id": batch["meta"].get("input_file_id"),
            "completion_window": batch["meta"].get("completion_window", "24h"),
            "status": "completed" if done else "in_progress",
            "output_file_id": self._output(batch) if done else None,
            "error_file_id": None,
            "created_at": CREATED,
            "in_progress_at": CREATED + 1,
            "expires_at": CREATED + 86_400,
            "completed_at": CREATED + 60 if done else None,
            "request_counts": {"total": total, "completed": total if done else 0, "failed": 0},
            "metadata": batch["meta"].get("metadata"),
        }
