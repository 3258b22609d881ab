"""fairseq BPE ``byte_tokens``: text as one token per UTF-8 byte (character-level corpora).

The tokens are those of fairseq's own byte-level ``bytes`` BPE: a printable Latin-1 byte is the
character itself, a space is ``▁`` (U+2581), any other byte ``b`` is the character U+0100 + b, and
none of them is whitespace, so a line of tokens is the bytes joined by spaces. A newline byte is a
line end (``</s>`` after fairseq-preprocess). ``examples/char_level/prepare.py`` writes enwik8 and
text8 this way; ``fairseq-interactive`` / ``fairseq-generate --bpe byte_tokens`` turn plain text
into these tokens and generated tokens back into text.

fairseq 0.12's ``--bpe bytes`` (and ``characters``) cannot be chosen on the command line: they are
registered without a config dataclass, so fairseq's hydra composition stops with "Could not load
bpe/bytes". Unlike ``bytes``, ``byte_tokens`` keeps every byte of its input (fairseq's collapses
runs of whitespace into one space), so encoding a line gives exactly the tokens prepare.py writes.
"""
from dataclasses import dataclass
from typing import List

from fairseq.data.encoders import register_bpe
from fairseq.dataclass import FairseqDataclass

SPACE_ESCAPE = "\u2581"


def _symbol(b: int) -> str:
    """fairseq.data.encoders.byte_utils.BYTE_TO_BCHAR, with the space escaped."""
    printable = 32 < b <= 126 or 161 <= b <= 172 or 174 <= b <= 255
    return SPACE_ESCAPE if b == 32 else chr(b) if printable else chr(256 + b)


SYMBOLS: List[str] = [_symbol(b) for b in range(256)]
_TO_SYMBOLS = str.maketrans({chr(b): s for b, s in enumerate(SYMBOLS)})
_TO_BYTES = {s: b for b, s in enumerate(SYMBOLS)}


def encode_bytes(data: bytes) -> str:
    """Space-separated tokens of ``data`` (which must not hold a newline: that is a line end)."""
    return " ".join(data.decode("latin-1").translate(_TO_SYMBOLS))


def decode_tokens(tokens: str) -> str:
    """Text of space-separated tokens; broken UTF-8 shows as U+FFFD, any other symbol (e.g.
    ``<unk>``) as itself."""
    out, pending = [], bytearray()
    for symbol in tokens.split():
        if len(symbol) == 1 and symbol in _TO_BYTES:
            pending.append(_TO_BYTES[symbol])
            continue
        out.append(pending.decode("utf-8", errors="replace"))
        out.append(symbol)
        pending = bytearray()
    out.append(pending.decode("utf-8", errors="replace"))
    return "".join(out)


@dataclass
class ByteTokensConfig(FairseqDataclass):
    pass


@register_bpe("byte_tokens", dataclass=ByteTokensConfig)
class ByteTokens:
    """``--bpe byte_tokens`` for fairseq-interactive / -generate."""

    def __init__(self, cfg=None):
        pass

    def encode(self, x: str) -> str:
        return encode_bytes(x.encode("utf-8"))

    def decode(self, x: str) -> str:
        return decode_tokens(x)

    def is_beginning_of_word(self, x: str) -> bool:
        return x == SPACE_ESCAPE
