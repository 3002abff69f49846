"""The trained model's tokenizer and text encoder, built offline.

The tokenizer is CLIP's byte-level BPE over the 256 byte symbols (so any text tokenizes, as
with the random model) plus merges that make every caption word one token: a word the model
was trained on maps to one learned embedding, instead of a spelling it would have to learn
to read. The merges are found by running BPE itself: while a word still splits, the merge of
its first two pieces is appended. A merge appended last never changes how an already whole
word splits (BPE applies the lowest-ranked pair present, and every step of that word had one).
"""

from __future__ import annotations

from collections.abc import Iterable

from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from engine.models.tiny import _bytes_to_unicode

TEXT_WIDTH = 64
MAX_TOKENS = 77


def _bpe(word: str, ranks: dict[tuple[str, str], int]) -> list[str]:
    """CLIP's BPE of one lower-case word (the last symbol carries "</w>")."""
    pieces = list(word[:-1]) + [word[-1] + "</w>"]
    while len(pieces) > 1:
        pairs = [(ranks.get((a, b)), i) for i, (a, b) in enumerate(zip(pieces, pieces[1:]))]
        known = [(r, i) for r, i in pairs if r is not None]
        if not known:
            break
        _, i = min(known)
        pieces[i:i + 2] = [pieces[i] + pieces[i + 1]]
    return pieces


def word_merges(words: Iterable[str]) -> list[tuple[str, str]]:
    merges: list[tuple[str, str]] = []
    ranks: dict[tuple[str, str], int] = {}
    byte_chars = _bytes_to_unicode()
    for word in words:
        word = "".join(byte_chars[b] for b in word.lower().encode())
        while len(pieces := _bpe(word, ranks)) > 1:
            pair = (pieces[0], pieces[1])
            ranks[pair] = len(merges)
            merges.append(pair)
    return merges


def build_word_tokenizer(words: Iterable[str]) -> CLIPTokenizer:
    symbols = list(_bytes_to_unicode().values())
    merges = word_merges(words)
    vocab: dict[str, int] = {}
    for s in symbols + [s + "</w>" for s in symbols] + [a + b for a, b in merges]:
        vocab.setdefault(s, len(vocab))
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=MAX_TOKENS)


def build_text_encoder(vocab_size: int) -> CLIPTextModel:
    config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=TEXT_WIDTH,
        intermediate_size=2 * TEXT_WIDTH,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=MAX_TOKENS,
        projection_dim=TEXT_WIDTH,
        bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1,
        pad_token_id=vocab_size - 1,
    )
    return CLIPTextModel(config)
