"""What the tokenizer modules share: :class:`TokenizerError`, the named special tokens, the byte-token
spelling, and :class:`TokenizerParts`, what a loader hands to :class:`~bitnet_actor.engine.tokenizer.Tokenizer`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bitnet_actor.errors import BitnetError

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from tokenizers import Tokenizer as Backend

__all__ = ["TokenizerError", "TokenizerParts"]

# The named special tokens transformers passes to chat templates (``special_tokens_map``), in its order.
_SPECIAL_TOKEN_NAMES = (
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
)

_BYTE_TOKEN_RE = re.compile(r"<0x[0-9A-Fa-f]{2}>")


class TokenizerError(BitnetError):
    """A tokenizer or chat template could not be loaded or applied; the message names the file or field."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenizerParts:
    """What a loader read: the backend and the settings a :class:`Tokenizer` is built from.

    Attributes:
        backend: the ``tokenizers.Tokenizer``, its post-processor already adding BOS/EOS as the model wants.
        special_tokens: ``bos_token``, ``eos_token``, ... as strings (or None).
        extra_eos_ids: more ids that end generation.
        chat_templates: template name -> Jinja source.
        source: where the tokenizer came from, for messages.
        notes: remarks about how it was built.
    """

    backend: Backend
    special_tokens: Mapping[str, str | None]
    extra_eos_ids: Sequence[int]
    chat_templates: Mapping[str, str]
    source: str
    notes: Sequence[str]
