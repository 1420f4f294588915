"""Text shared by every layer: repair, tokens and the framework-free message shape."""

from __future__ import annotations

from typing import TYPE_CHECKING

from graphthrift._lazy import lazy_getattr

_EXPORTS = {
    "Message": ".messages",
    "REPLACEMENT": ".repair",
    "TOKENS_REPLY_PRIMING": ".tokens",
    "TokenCount": ".tokens",
    "ToolCall": ".messages",
    "clean_json": ".repair",
    "clean_text": ".repair",
    "content_text": ".messages",
    "count_message": ".tokens",
    "count_messages": ".tokens",
    "count_text": ".tokens",
    "encoding_name_for": ".tokens",
    "get_encoding": ".tokens",
    "message_fields": ".messages",
    "needs_repair": ".repair",
    "seed_tiktoken_cache": ".tokens",
    "to_message": ".messages",
    "to_messages": ".messages",
    "split_chat_sentences": ".sentences",
    "split_sentences": ".sentences",
    "truncate_head": ".tokens",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_getattr(__name__, _EXPORTS)

if TYPE_CHECKING:  # pragma: no cover
    from .messages import Message as Message
    from .messages import ToolCall as ToolCall
    from .messages import content_text as content_text
    from .messages import message_fields as message_fields
    from .messages import to_message as to_message
    from .messages import to_messages as to_messages
    from .repair import REPLACEMENT as REPLACEMENT
    from .repair import clean_json as clean_json
    from .repair import clean_text as clean_text
    from .repair import needs_repair as needs_repair
    from .sentences import split_chat_sentences as split_chat_sentences
    from .sentences import split_sentences as split_sentences
    from .tokens import TOKENS_REPLY_PRIMING as TOKENS_REPLY_PRIMING
    from .tokens import TokenCount as TokenCount
    from .tokens import count_message as count_message
    from .tokens import count_messages as count_messages
    from .tokens import count_text as count_text
    from .tokens import encoding_name_for as encoding_name_for
    from .tokens import get_encoding as get_encoding
    from .tokens import seed_tiktoken_cache as seed_tiktoken_cache
    from .tokens import truncate_head as truncate_head
