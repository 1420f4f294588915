"""LLMLingua as an optional compression backend (the ``lingua`` extra).

LLMLingua drops individual tokens with a small language model. It is strong but slow on
CPU: a BERT-base LLMLingua-2 model takes about 5 s for 2,000 tokens on 2 cores, an
XLM-R-large one about 40 s, so ``ExtractiveCompressor`` stays the default. ``llmlingua``
and ``torch`` are imported, and the model loaded, only on first use.

Two modes:

- ``"llmlingua2"``: token classification (``PromptCompressor(use_llmlingua2=True)``),
  question-agnostic, each chunk compressed on its own so chunk *i* of the result is
  chunk *i* of the input. The model path must contain ``bert-base-multilingual-cased`` or
  ``xlm-roberta-large``: LLMLingua picks its tokenizer conventions from the name.
- ``"longllmlingua"``: a causal LM ranks the chunks by how well they predict the question,
  keeps the best ones (coarse), then drops tokens inside each kept chunk conditioned on
  the question (fine). On transformers >= 4.56 LLMLingua's KV-cache slicing breaks
  (upstream issue #210); we adapt the model's cache to the old tuple format around it.

Unlike the extractive compressor, LLMLingua rewrites text inside sentences and can split
numbers ("$3.5" may come out as "$ 3. 5"); ``force_reserve_digit`` (on by default) keeps
tokens with digits. The budget is enforced on our own token count afterwards: if the
model keeps too much, the least relevant chunk is cut back at word boundaries.

Example (with the model saved in a local directory)::

    c = LLMLinguaCompressor("/models/llmlingua-2-bert-base-multilingual-cased-meetingbank",
                            target_ratio=0.5)
    c.compress("When did the bridge open?", chunks).texts
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import threading
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from graphthrift.compress.base import BaseCompressor
from graphthrift.compress.budget import resolve_budget
from graphthrift.compress.result import CompressionResult
from graphthrift.config import env_str
from graphthrift.errors import LinguaModelError, MissingExtra
from graphthrift.text.tokens import encoding_name_for, get_encoding, seed_tiktoken_cache

__all__ = ["LLMLinguaCompressor", "LinguaModelError"]

Mode = Literal["llmlingua2", "longllmlingua"]
DEFAULT_LLMLINGUA2_MODEL = "microsoft/llmlingua-2-bert-base-multilingual-cased-meetingbank"
_LLMLINGUA2_NAMES = ("bert-base-multilingual-cased", "xlm-roberta-large")


def _require_llmlingua() -> None:
    for package in ("llmlingua", "torch"):
        if importlib.util.find_spec(package) is None:
            raise MissingExtra("lingua", package)


class LLMLinguaCompressor(BaseCompressor):
    """Compress chunks with Microsoft's LLMLingua-2 or LongLLMLingua, within a token budget.

    Args:
        model_path: a hub id or local directory. Default: env
            ``GRAPHTHRIFT_LLMLINGUA_MODEL``, else the official LLMLingua-2 BERT model for
            ``"llmlingua2"``; ``"longllmlingua"`` needs an explicit causal LM.
        mode: ``"llmlingua2"`` or ``"longllmlingua"`` (see the module docstring).
        target_ratio: kept fraction in (0, 1] (kept / original tokens); default 1/3.
        max_tokens: absolute budget; with both, the smaller wins.
        device: torch device, ``"cpu"`` by default.
        model: the downstream model (counts tokens, prices the saving in the ledger).
        force_tokens: tokens LLMLingua-2 always keeps (at most 100).
        force_reserve_digit: keep every token that contains a digit.
        compress_kwargs: extra keyword arguments for ``PromptCompressor.compress_prompt``.
        prompt_compressor: an already-built ``PromptCompressor`` to share between instances.
        ledger / tags: write each compression to this ledger with these tags.

    Raises:
        MissingExtra: ``llmlingua`` or ``torch`` is not installed
            (``pip install 'graphthrift[lingua]'``).
        LinguaModelError: the model cannot be loaded or its name does not fit the mode.
    """

    def __init__(
        self,
        model_path: str | os.PathLike[str] | None = None,
        *,
        mode: Mode = "llmlingua2",
        target_ratio: float | None = None,
        max_tokens: int | None = None,
        device: str = "cpu",
        model: str | None = None,
        force_tokens: Sequence[str] = ("\n", ".", "!", "?", ","),
        force_reserve_digit: bool = True,
        compress_kwargs: Mapping[str, Any] | None = None,
        prompt_compressor: Any = None,
        ledger: Any = None,
        tags: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(
            target_ratio=target_ratio,
            max_tokens=max_tokens,
            model=model,
            ledger=ledger,
            tags=tags,
        )
        if mode not in ("llmlingua2", "longllmlingua"):
            raise ValueError(f"mode must be 'llmlingua2' or 'longllmlingua', got {mode!r}")
        if prompt_compressor is None:
            _require_llmlingua()
        path = str(model_path or env_str("GRAPHTHRIFT_LLMLINGUA_MODEL") or "")
        if not path and mode == "llmlingua2":
            path = DEFAULT_LLMLINGUA2_MODEL
        if not path and prompt_compressor is None:
            raise LinguaModelError("", mode, "LongLLMLingua needs a causal LM; pass model_path")
        if (
            mode == "llmlingua2"
            and prompt_compressor is None
            and not any(n in path for n in _LLMLINGUA2_NAMES)
        ):
            raise LinguaModelError(
                path,
                mode,
                "LLMLingua-2 only accepts a path containing "
                "'bert-base-multilingual-cased' or 'xlm-roberta-large'; rename the directory",
            )
        if len(force_tokens) > 100:
            raise ValueError(f"force_tokens takes at most 100 tokens, got {len(force_tokens)}")
        self.model_path = path
        self.mode: Mode = mode
        self.name = mode
        self.device = device
        self.force_tokens = list(force_tokens)
        self.force_reserve_digit = force_reserve_digit
        self.compress_kwargs = dict(compress_kwargs or {})
        self._compressor = prompt_compressor
        self._load_lock = threading.Lock()
        self._run_lock = threading.Lock()  # torch on 2 cores gains nothing from overlap

    @property
    def prompt_compressor(self) -> Any:
        """The underlying ``llmlingua.PromptCompressor``, loaded on first use."""
        if self._compressor is None:
            with self._load_lock:
                if self._compressor is None:
                    self._compressor = self._load()
        return self._compressor

    def _load(self) -> Any:
        _require_llmlingua()
        seed_tiktoken_cache(("cl100k_base",))  # PromptCompressor() loads gpt-3.5's encoding
        from llmlingua import PromptCompressor

        saved = _rng_state()  # LLMLingua-2 reseeds random, numpy and torch globally
        try:
            pc = PromptCompressor(
                model_name=self.model_path,
                device_map=self.device,
                use_llmlingua2=self.mode == "llmlingua2",
            )
        except Exception as exc:  # transformers raises many kinds: OSError, ValueError...
            raise LinguaModelError(
                self.model_path, self.mode, f"{type(exc).__name__}: {exc}"
            ) from exc
        finally:
            _restore_rng_state(saved)
        if self.mode == "longllmlingua":
            pc.model = _LegacyCacheModel(pc.model)
        return pc

    # -- one implementation; async runs it in a worker thread (torch releases the GIL) ----

    async def _arun(
        self, question: str, chunks: list[str], target_ratio: float | None, max_tokens: int | None
    ) -> CompressionResult:
        return await asyncio.to_thread(self._run, question, chunks, target_ratio, max_tokens)

    def _run(
        self, question: str, chunks: list[str], target_ratio: float | None, max_tokens: int | None
    ) -> CompressionResult:
        encoding = get_encoding(encoding_name_for(self.model)[0])
        counts = [len(encoding.encode_ordinary(c)) if c.strip() else 0 for c in chunks]
        original = sum(counts)
        budget = resolve_budget(original, target_ratio, max_tokens)
        live = [i for i, n in enumerate(counts) if n]
        texts = list(chunks)
        order = list(live)  # least relevant last
        details: dict[str, Any] = {"mode": self.mode, "model_path": self.model_path}
        if budget < original and live:
            with self._run_lock:
                if self.mode == "llmlingua2":
                    texts = self._llmlingua2(chunks, live, budget / original)
                else:
                    texts, order = self._longllmlingua(question, chunks, counts, live, budget)
        texts = [t.strip() if counts[i] else "" for i, t in enumerate(texts)]
        kept = _fit_budget(texts, order, budget, encoding)
        details["trimmed"] = kept != texts
        final = [len(encoding.encode_ordinary(t)) if t else 0 for t in kept]
        return CompressionResult(
            texts=tuple(kept),
            original_tokens=original,
            kept_tokens=sum(final),
            budget=budget,
            chunk_original_tokens=tuple(counts),
            chunk_kept_tokens=tuple(final),
            kept_sentences=tuple(() for _ in kept),
            compressor=self.name,
            model=self.model,
            details=details,
        )

    def _llmlingua2(self, chunks: list[str], live: list[int], rate: float) -> list[str]:
        """Token-level LLMLingua-2 per chunk; ``compressed_prompt_list`` keeps the order."""
        pc = self.prompt_compressor
        result = pc.compress_prompt(
            [chunks[i] for i in live],
            rate=rate,
            use_context_level_filter=False,
            force_tokens=self.force_tokens,
            force_reserve_digit=self.force_reserve_digit,
            drop_consecutive=True,
            **self.compress_kwargs,
        )
        out = ["" for _ in chunks]
        for i, text in zip(live, result["compressed_prompt_list"], strict=True):
            out[i] = text
        return out

    def _longllmlingua(
        self, question: str, chunks: list[str], counts: list[int], live: list[int], budget: int
    ) -> tuple[list[str], list[int]]:
        """Coarse: rank chunks by conditional perplexity; fine: drop tokens in the kept ones."""
        pc = self.prompt_compressor
        has_q = bool(question.strip())
        condition = "after" if has_q else "none"
        method = "longllmlingua" if has_q else "llmlingua"
        texts = [chunks[i] for i in live]
        lengths = [pc.get_token_length(t) for t in texts]
        ranked = pc.get_rank_results(texts, question, method, condition, lengths)
        order = [live[int(idx)] for idx, _ in ranked]
        # Coarse budget halfway between the target and everything, as LLMLingua-2 does.
        original = sum(counts)
        coarse = budget + (original - budget) // 2
        kept_chunks, used = [], 0
        for i in order:
            if used and used + counts[i] > coarse:
                continue
            kept_chunks.append(i)
            used += counts[i]
        out = ["" for _ in chunks]
        rate = min(1.0, budget / max(used, 1))
        for i in kept_chunks:
            if rate >= 1.0:
                out[i] = chunks[i]
                continue
            result = pc.compress_prompt(
                [chunks[i]],
                question=question,
                rate=rate,
                use_context_level_filter=False,
                condition_in_question=condition,
                rank_method=method,
                concate_question=False,
                condition_compare=has_q,
                **self.compress_kwargs,
            )
            out[i] = result["compressed_prompt"]
        return out, [i for i in order if i in kept_chunks]


def _rng_state() -> tuple[Any, ...]:
    """The global random states LLMLingua's constructor overwrites, to put back after."""
    import random

    import numpy as np
    import torch

    return (
        random.getstate(),
        np.random.get_state(),
        torch.random.get_rng_state(),
        os.environ.get("PYTHONHASHSEED"),
    )


def _restore_rng_state(saved: tuple[Any, ...]) -> None:
    import random

    import numpy as np
    import torch

    random.setstate(saved[0])
    np.random.set_state(saved[1])
    torch.random.set_rng_state(saved[2])
    if saved[3] is None:
        os.environ.pop("PYTHONHASHSEED", None)
    else:
        os.environ["PYTHONHASHSEED"] = saved[3]


def _fit_budget(texts: list[str], order: list[int], budget: int, encoding: Any) -> list[str]:
    """Cut the least relevant chunks back, at word boundaries, until the total fits."""
    out = list(texts)
    counts = [len(encoding.encode_ordinary(t)) if t else 0 for t in out]
    for i in [*reversed(order), *(j for j in range(len(out)) if j not in order)]:
        excess = sum(counts) - budget
        if excess <= 0:
            break
        if not out[i]:
            continue
        allowed = counts[i] - excess
        words = out[i].split()
        lo, hi = 0, len(words)  # the most words whose text fits ``allowed`` tokens
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if len(encoding.encode_ordinary(" ".join(words[:mid]))) <= allowed:
                lo = mid
            else:
                hi = mid - 1
        out[i] = " ".join(words[:lo])
        counts[i] = len(encoding.encode_ordinary(out[i])) if out[i] else 0
    return out


class _LegacyCacheModel:
    """Presents a causal LM with tuple KV caches, as LLMLingua-1 code expects.

    transformers >= 4.56 returns ``Cache`` objects that LLMLingua slices as tuples
    (upstream issue #210); we convert on the way in and out. Older versions pass through.
    """

    def __init__(self, model: Any) -> None:
        self._model = model
        self._converted = False  # set once the model has returned a Cache object

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)

    def __call__(self, *args: Any, past_key_values: Any = None, **kwargs: Any) -> Any:
        if self._converted and isinstance(past_key_values, list | tuple):
            from transformers import DynamicCache

            past_key_values = DynamicCache(ddp_cache_data=[(k, v) for k, v, *_ in past_key_values])
        output = self._model(*args, past_key_values=past_key_values, **kwargs)
        cache = getattr(output, "past_key_values", None)
        if cache is not None and not isinstance(cache, list | tuple):
            self._converted = True
            if hasattr(cache, "layers"):
                output.past_key_values = [(layer.keys, layer.values) for layer in cache.layers]
            elif hasattr(cache, "to_legacy_cache"):
                output.past_key_values = list(cache.to_legacy_cache())
        return output
