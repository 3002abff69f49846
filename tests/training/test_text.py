from __future__ import annotations

from training.procedural import WORDS
from training.text import build_word_tokenizer


def test_every_caption_word_is_one_token_and_any_text_still_tokenizes():
    tokenizer = build_word_tokenizer(WORDS)
    for word in WORDS:
        assert len(tokenizer(word).input_ids) == 3, word  # start, the word, end
    ids = tokenizer("red circle").input_ids
    assert tokenizer.convert_ids_to_tokens(ids[1:-1]) == ["red</w>", "circle</w>"]
    unknown = tokenizer("Neon jellyfish, 4K!").input_ids
    assert tokenizer.decode(unknown, skip_special_tokens=True).replace(" ", "") == "neonjellyfish,4k!"


def test_the_tokenizer_survives_a_save_and_load(tmp_path):
    from transformers import CLIPTokenizer

    tokenizer = build_word_tokenizer(WORDS)
    tokenizer.save_pretrained(str(tmp_path))
    again = CLIPTokenizer.from_pretrained(str(tmp_path))
    text = "a checkered red and white ring on a gradient from blue to black"
    assert again(text).input_ids == tokenizer(text).input_ids
