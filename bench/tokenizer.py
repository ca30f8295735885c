"""The tokenizer's figures: encoding a long word and mixed text, encoder.py against tiktoken.

A word's cost must grow about linearly with its length: the figure that shows it is the time of a
100,000-letter word over that of a 10,000-letter word: 10 for linear work, 12.5 for n log n, 100 for
quadratic. Its target, 30, tells them apart with room for the noise of timing a 10 ms run.
"""
import glob
import os
import random
import string

from harness import REPO_DIR, Samples, seconds

LONG_WORD = 100_000


def mixed_text() -> str:
    """About 2 MB of text that is not all prose: this repository's code and docs, numbers, short CJK sentences."""
    rng = random.Random(0)
    paths = sorted(glob.glob(os.path.join(REPO_DIR, "*.py")) + glob.glob(os.path.join(REPO_DIR, "*.md")))
    text = "".join(open(path, encoding="utf-8").read() for path in paths)
    text += " ".join(str(rng.randrange(10**9)) for _ in range(20_000))
    text += "。".join("".join(chr(rng.randrange(0x4E00, 0x9FFF)) for _ in range(rng.randrange(2, 12)))
                     for _ in range(5_000))
    return (text * 10)[:2_000_000]


def tiktoken_encoding(model_dir: str) -> object:
    """tiktoken's GPT-2 encoding built from the model's own encoder.json and vocab.bpe."""
    import tiktoken
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks

    ranks = data_gym_to_mergeable_bpe_ranks(vocab_bpe_file=os.path.join(model_dir, "vocab.bpe"),
                                            encoder_json_file=os.path.join(model_dir, "encoder.json"))
    pattern = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
    return tiktoken.Encoding(name="gpt2", pat_str=pattern, mergeable_ranks=ranks, special_tokens={})


def measure_tokenizer(samples: Samples, encoder: object, model_dir: str) -> None:
    """One round of the tokenizer's figures, in seconds, added to samples (each with a cold word cache)."""
    tik = tiktoken_encoding(model_dir)
    word = "".join(random.Random(1).choice(string.ascii_letters) for _ in range(LONG_WORD))
    text = mixed_text()

    def ours(text: str) -> float:
        encoder.cache.clear()
        return seconds(encoder.encode_ordinary, text)

    samples.measure("ours_tokenizer_word", lambda: ours(word))
    samples.measure("ours_tokenizer_short_word", lambda: ours(word[: LONG_WORD // 10]))
    samples.measure("tiktoken_tokenizer_word", lambda: seconds(tik.encode_ordinary, word))
    samples.measure("ours_tokenizer_text", lambda: ours(text))
    samples.measure("tiktoken_tokenizer_text", lambda: seconds(tik.encode_ordinary, text))
    samples.add("tokenizer_text_bytes", len(text.encode("utf-8")))
