"""BPE ``byte_tokens``: fairseq's byte-level tokens, every byte kept, and back to text."""
from fairseq.data.encoders.byte_utils import BYTE_TO_BCHAR
from fairseq.data.encoders.bytes import Bytes

from truncated_bptt.byte_tokens import SYMBOLS, ByteTokens, decode_tokens, encode_bytes

TEXT = "<page>\tCafé 漢字  naïve</page>"


def test_symbols_are_fairseqs_with_the_space_escaped_and_never_whitespace():
    assert SYMBOLS == ["▁" if b == 32 else BYTE_TO_BCHAR[b] for b in range(256)]
    assert len(set(SYMBOLS)) == 256
    assert not any(s.isspace() or len(s) != 1 for s in SYMBOLS)


def test_encode_keeps_every_byte_and_matches_fairseqs_bytes_bpe_on_normalized_text():
    tokens = ByteTokens().encode(TEXT).split()
    assert len(tokens) == len(TEXT.encode("utf-8"))  # tab and double space kept
    plain = "Café 漢字 naïve"  # no whitespace for fairseq's own BPE to collapse
    assert ByteTokens().encode(plain) == Bytes.encode(plain)


def test_decode_restores_text_and_marks_what_is_not_a_byte():
    assert ByteTokens().decode(ByteTokens().encode(TEXT)) == TEXT
    assert decode_tokens(encode_bytes("é".encode("utf-8")[:1])) == "\ufffd"  # half a character
    assert decode_tokens(encode_bytes(b"a b") + " <unk> " + encode_bytes(b"c")) == "a b<unk>c"


def test_registered_as_a_fairseq_bpe_with_a_config():
    """A config dataclass is what lets fairseq 0.12's command line (hydra) select it."""
    import truncated_bptt  # noqa: F401
    from fairseq.registry import REGISTRIES

    bpe = REGISTRIES["bpe"]
    assert bpe["registry"]["byte_tokens"] is ByteTokens
    assert "byte_tokens" in bpe["dataclass_registry"]
    assert "bytes" not in bpe["dataclass_registry"]  # fairseq's own, which its CLI cannot select
