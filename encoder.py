"""GPT-2's tokenizer: byte-level byte-pair encoding (BPE), as in OpenAI's release.

Text becomes token ids in three steps:
1. Pre-tokenize: a regular expression cuts the text into "words" (letters with one optional
   leading space, digits, punctuation, whitespace, English contractions). A merge never crosses
   a word boundary, so " dog" is always tokenized the same way, wherever it appears.
2. Map bytes to symbols: each word's UTF-8 bytes are written as printable unicode characters,
   one per byte, so the vocabulary files can be plain text (a space byte shows up as "Ġ").
   Any byte sequence can be encoded, so there is no "unknown" token.
3. Merge: start from single byte symbols and repeatedly join the adjacent pair that appears
   earliest in vocab.bpe (earlier lines were more frequent in the training data), until no
   adjacent pair is listed. Each resulting piece is a key of encoder.json, which gives its id.

Decoding looks each id up, maps the symbols back to bytes and decodes the bytes as UTF-8.

The literal text "<|endoftext|>":
- `encode` turns each occurrence into the single special token 50256 (`eot_token`) and encodes
  the text between occurrences normally. HuggingFace's GPT2Tokenizer and tiktoken's
  `encode(text, allowed_special="all")` do the same.
- `encode_ordinary` treats it as ordinary text ("<|", "endoftext", "|>"), as OpenAI's original
  encoder and tiktoken's `encode_ordinary` do.
Either way `decode(encode(text)) == text`.

Which characters count as letters, numbers or whitespace comes from the Unicode tables of the
installed `regex` package, so tokenizers built on other tables may class recently added characters
differently: a letter that `regex` knows may be an unassigned code point, which goes with
punctuation, to a tokenizer built on an older Unicode version (tiktoken, today). The token ids then
differ in some contexts, e.g. when such a character is followed by "'s"; tests/tokenizer_cases.py
lists those characters, and tests/requirements.txt pins the versions compared.
"""
import heapq
import json
import os

import regex  # unlike the standard `re`, it knows the classes \p{L} (letters) and \p{N} (numbers)

END_OF_TEXT = "<|endoftext|>"

# OpenAI's pre-tokenizer pattern. `\s+(?!\S)` takes a run of whitespace except its last character
# when a word follows, so that the space stays attached to the word: "a   b" -> "a", "  ", " b".
SPLIT_PATTERN = regex.compile(
    r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
)

# Words repeat a lot in real text, so merging results are remembered per word. The cache is
# emptied when it grows past CACHE_SIZE words, and words longer than CACHED_WORD_LENGTH characters
# (a base64 blob, a long number: they rarely repeat) are not kept, so that encoding endless varied
# input cannot use endless memory: a few megabytes at most.
CACHE_SIZE = 50_000
CACHED_WORD_LENGTH = 64


def get_encoder(model_size: str, models_dir: str) -> "Encoder":
    """Load the tokenizer from <models_dir>/<model_size>/encoder.json and vocab.bpe."""
    return load_vocabulary_files(os.path.join(models_dir, model_size), "encoder.json", "vocab.bpe")


def load_vocabulary_files(folder: str, vocab_name: str, merges_name: str, added: dict | None = None) -> "Encoder":
    """An Encoder from a vocabulary file ({token: id}: OpenAI's encoder.json, Hugging Face's vocab.json)
    and a merges file (OpenAI's vocab.bpe, Hugging Face's merges.txt), plus added tokens {text: id}."""
    encoder_path, merges_path = os.path.join(folder, vocab_name), os.path.join(folder, merges_name)
    encoder = parse_encoder_json(encoder_path, read_vocabulary_file(encoder_path))
    bpe_merges = parse_vocab_bpe(merges_path, read_vocabulary_file(merges_path))
    check_consistent(encoder, bpe_merges, folder)
    return Encoder(encoder, bpe_merges, added)


def get_hf_encoder(folder: str) -> "Encoder":
    """Load a Hugging Face GPT-2 tokenizer: tokenizer.json if there is one (as transformers prefers),
    else vocab.json and merges.txt with the added tokens of added_tokens.json or tokenizer_config.json.
    Nothing downloads these files, so a damaged one is to be copied again, not downloaded."""
    try:
        return read_hf_tokenizer(folder)
    except VocabularyError as e:
        raise VocabularyError(e.problem, COPY_AGAIN if "download" in e.remedy else e.remedy) from None


def read_hf_tokenizer(folder: str) -> "Encoder":
    if os.path.isfile(os.path.join(folder, "tokenizer.json")):
        return load_tokenizer_json(os.path.join(folder, "tokenizer.json"))
    if not all(os.path.isfile(os.path.join(folder, name)) for name in ("vocab.json", "merges.txt")):
        raise VocabularyError(f"{folder} has no tokenizer", "it needs tokenizer.json, or vocab.json and merges.txt")
    return load_vocabulary_files(folder, "vocab.json", "merges.txt", read_added_tokens(folder))


def load_tokenizer_json(path: str) -> "Encoder":
    """tokenizers' single-file format: {"model": {"type": "BPE", "vocab": {...}, "merges": [...]},
    "added_tokens": [{"id": ..., "content": ...}, ...], ...}; merges are "a b" strings or [a, b] pairs."""
    try:
        data = json.loads(read_vocabulary_file(path))
        model = data["model"]
        if model.get("type") != "BPE":
            raise VocabularyError(f"{path} is a {model.get('type')!r} tokenizer", "GPT-2's is byte-level BPE")
        if (data.get("pre_tokenizer") or {}).get("add_prefix_space"):
            raise VocabularyError(f"{path}: add_prefix_space is true", "GPT-2's tokenizer adds no space")
        merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
        added = {token["content"]: token["id"] for token in data.get("added_tokens") or []}
        encoder = model["vocab"]
    except RecursionError:
        raise corrupt_file(path, "its JSON is nested too deeply") from None
    except (ValueError, KeyError, TypeError, AttributeError):
        raise corrupt_file(path, "not a tokenizer.json of a BPE model") from None
    if not isinstance(encoder, dict) or END_OF_TEXT not in encoder:
        raise corrupt_file(path, f"no vocabulary with {END_OF_TEXT}")
    check_ids(encoder, path, "model.vocab")
    if not all(len(merge) == 2 and all(isinstance(part, str) and part for part in merge) for merge in merges):
        raise corrupt_file(path, "a merge is not two symbol strings")
    check_added(added, path)
    check_consistent(encoder, merges, os.path.dirname(path))
    return Encoder(encoder, merges, added)


def read_added_tokens(folder: str) -> dict[str, int]:
    """{text: id} from added_tokens.json, or from tokenizer_config.json's added_tokens_decoder."""
    path = os.path.join(folder, "added_tokens.json")
    try:
        if os.path.isfile(path):
            added = json.loads(read_vocabulary_file(path))
        else:
            path = os.path.join(folder, "tokenizer_config.json")
            config = json.loads(read_vocabulary_file(path)) if os.path.isfile(path) else {}
            decoder = config.get("added_tokens_decoder") or {}
            added = {token["content"]: int(i) for i, token in decoder.items()}
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
        raise corrupt_file(path, "its added tokens are not {text: id}") from None
    check_added(added, path)
    return added


def check_added(added: object, path: str) -> None:
    if not (isinstance(added, dict) and all(isinstance(t, str) and t for t in added)):
        raise corrupt_file(path, "its added tokens are not {text: id}")
    check_ids(added, path, "added tokens")


def check_ids(tokens: dict, path: str, field: str) -> None:
    """Token ids index the embedding rows: a negative one would silently read a row from the end,
    and a bool or a float is no id at all."""
    bad = next((token for token, i in tokens.items() if not (type(i) is int and i >= 0)), None)
    if bad is not None:
        raise corrupt_file(path, f"{field}: the id of {bad!r} is {tokens[bad]!r}, not an integer >= 0")


class Encoder:
    """Converts between text and GPT-2 token ids."""

    def __init__(self, encoder: dict[str, int], bpe_merges: list[tuple[str, str]], added: dict | None = None):
        self.encoder = encoder  # token (as byte symbols) -> id
        self.bpe_ranks = {tuple(pair): rank for rank, pair in enumerate(bpe_merges)}
        self.decoder = {i: token for token, i in encoder.items()}  # id -> token (as byte symbols)
        # Added tokens (a fine-tune's new ones, and <|endoftext|>) are matched whole in encode's text,
        # longest first, as transformers does; their text is plain text, not byte symbols.
        self.added = {END_OF_TEXT: encoder[END_OF_TEXT], **(added or {})}  # text -> id
        self.added_bytes = {i: text.encode("utf-8") for text, i in self.added.items() if i not in self.decoder}
        self.added_pattern = regex.compile("|".join(map(regex.escape, sorted(self.added, key=len, reverse=True))))
        self.byte_encoder = bytes_to_unicode()  # byte value -> symbol
        # symbol -> the character whose Latin-1 encoding is that byte: str.translate then
        # .encode("latin-1") turns a whole string of symbols back into bytes at C speed
        self.symbols_to_latin1 = {ord(symbol): byte for byte, symbol in self.byte_encoder.items()}
        self.eot_token = encoder[END_OF_TEXT]
        self.cache = {}  # word -> its token ids

    def encode(self, text: str) -> list[int]:
        """Token ids for `text`; each literal "<|endoftext|>" becomes the single token eot_token, and
        each added token's text its id."""
        tokens, start = [], 0
        for match in self.added_pattern.finditer(text):
            tokens.extend(self.encode_ordinary(text[start : match.start()]))
            tokens.append(self.added[match[0]])
            start = match.end()
        tokens.extend(self.encode_ordinary(text[start:]))
        return tokens

    def encode_ordinary(self, text: str) -> list[int]:
        """Token ids for `text`, treating "<|endoftext|>" like any other text."""
        tokens = []
        for word in SPLIT_PATTERN.findall(text):
            tokens.extend(self.encode_word(word))
        return tokens

    def decode(self, tokens: list[int]) -> str:
        """The text of `tokens`; bytes that are not valid UTF-8 become U+FFFD (a lone
        token can end in the middle of a multi-byte character)."""
        return self.decode_bytes(tokens).decode("utf-8", errors="replace")

    def decode_bytes(self, tokens: list[int]) -> bytes:
        """The raw bytes of `tokens`, which may end with an incomplete UTF-8 character. An id the
        vocabulary does not have (a model's embedding rows may outnumber its tokens) gives U+FFFD."""
        if all(token in self.decoder for token in tokens):
            return self.symbols_to_bytes("".join(self.decoder[token] for token in tokens))
        return b"".join(self.symbols_to_bytes(self.decoder[token]) if token in self.decoder
                        else self.added_bytes.get(token, "\ufffd".encode("utf-8")) for token in tokens)

    def symbols_to_bytes(self, symbols: str) -> bytes:
        return symbols.translate(self.symbols_to_latin1).encode("latin-1")

    def encode_word(self, word: str) -> list[int]:
        """Token ids of one pre-tokenized word, remembered in the cache if it is short."""
        if word in self.cache:
            return self.cache[word]
        symbols = "".join(self.byte_encoder[byte] for byte in word.encode("utf-8"))
        tokens = [self.encoder[part] for part in self.bpe(symbols)]
        if len(word) <= CACHED_WORD_LENGTH:
            if len(self.cache) >= CACHE_SIZE:
                self.cache.clear()
            self.cache[word] = tokens
        return tokens

    def bpe(self, symbols: str) -> list[str]:
        """Split a word written in byte symbols into vocabulary tokens by applying merges.

        The merges are applied one at a time, the lowest rank first and, among equal ranks, the
        leftmost first. Rescanning the word for the best pair after every merge would cost time
        growing with the square of its length (a 100,000-letter word took minutes), so the
        candidate pairs wait in a heap, ordered by (rank, position), and the parts form a linked
        list: each merge joins two neighbours and offers the two new pairs it creates. A heap
        entry whose pair has changed since it was pushed is stale and skipped.

        This gives the ids of OpenAI's loop, which merges every occurrence of the best pair, left
        to right, before looking for the next best: overlaps go to the left ("a", "a", "a" -> "aa",
        "a"), and a merge never creates a pair ranked below the one being merged, since a merge
        is listed after the merges that make its parts.
        """
        parts: list[str | None] = list(symbols)  # parts[i] is None once merged into its left neighbour
        if len(parts) < 2:
            return parts
        ranks = self.bpe_ranks
        following = [*range(1, len(parts)), -1]  # index of the next live part (-1: none)
        preceding = list(range(-1, len(parts) - 1))
        heap = [(ranks[pair], i) for i, pair in enumerate(zip(parts, parts[1:])) if pair in ranks]
        heapq.heapify(heap)
        while heap:
            rank, i = heapq.heappop(heap)
            j = following[i]
            if parts[i] is None or j < 0 or ranks.get((parts[i], parts[j])) != rank:
                continue  # stale: one of the two parts was merged into something else since
            parts[i] += parts[j]  # [.., parts[i], parts[j], ..] -> [.., parts[i] + parts[j], ..]
            parts[j] = None
            following[i] = k = following[j]
            if k >= 0:
                preceding[k] = i
                self.offer(heap, parts, i, k)
            if preceding[i] >= 0:
                self.offer(heap, parts, preceding[i], i)
        return [part for part in parts if part is not None]

    def offer(self, heap: list, parts: list, left: int, right: int) -> None:
        """Push the pair of parts[left] and parts[right] onto the heap, if it is a merge."""
        rank = self.bpe_ranks.get((parts[left], parts[right]))
        if rank is not None:
            heapq.heappush(heap, (rank, left))


def bytes_to_unicode() -> dict[int, str]:
    """The symbol standing for each byte value 0..255.

    The 188 bytes that print as a visible Latin-1 character stand for themselves; the other 68
    (control characters, space, no-break space, soft hyphen) get the code points 256, 257, ...
    in byte order. So a space (byte 32, the 33rd such byte) is written "Ġ" (U+0120).
    """
    visible = [
        *range(ord("!"), ord("~") + 1),  # ASCII without space and the control characters
        *range(ord("¡"), ord("¬") + 1),  # Latin-1 without no-break space (A0)...
        *range(ord("®"), ord("ÿ") + 1),  # ...and soft hyphen (AD)
    ]
    symbols = {}
    next_code_point = 256
    for byte in range(256):
        if byte in visible:
            symbols[byte] = chr(byte)
        else:
            symbols[byte] = chr(next_code_point)
            next_code_point += 1
    return symbols


# ---------------------------------------------------------------- reading the vocabulary files
# A missing or damaged file is something the user can fix, so it is reported as a VocabularyError
# with a one-line message saying what to do, never as a traceback.


class VocabularyError(Exception):
    """encoder.json or vocab.bpe is missing or damaged; the message says what to do.

    The tokenizer imports nothing of the project, so utils.py turns this into errors.GPT2Error.
    `problem` and `remedy` are kept apart so that a loader of files nothing downloads (Hugging Face's)
    can give its own remedy.
    """

    def __init__(self, problem: str, remedy: str = "") -> None:
        super().__init__(f"{problem}: {remedy}" if remedy else problem)
        self.problem, self.remedy = problem, remedy


DOWNLOAD_AGAIN = "delete it and run again to re-download"
COPY_AGAIN = "copy or restore it from where the model came from (this tool does not download it)"


def read_vocabulary_file(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        raise VocabularyError(f"{path} is missing", "run again to download it") from None
    except UnicodeDecodeError:
        raise corrupt_file(path, "not UTF-8 text") from None
    except OSError as e:
        raise VocabularyError(f"cannot read {path} ({e.strerror})", "make it a readable file, or delete it "
                              "and run again") from None


def parse_encoder_json(path: str, text: str) -> dict[str, int]:
    """encoder.json is one JSON object: {token written in byte symbols: id}."""
    try:
        encoder = json.loads(text)
    except json.JSONDecodeError:
        raise corrupt_file(path, "not valid JSON") from None
    except RecursionError:
        raise corrupt_file(path, "its JSON is nested too deeply") from None
    if not isinstance(encoder, dict):
        raise corrupt_file(path, "not a JSON object of token ids")
    check_ids(encoder, path, "the vocabulary")
    if END_OF_TEXT not in encoder:
        raise corrupt_file(path, f"no {END_OF_TEXT} token")
    return encoder


def parse_vocab_bpe(path: str, text: str) -> list[tuple[str, str]]:
    """vocab.bpe is a "#version" line, then one merge per line: two symbol strings and a space."""
    lines = text.split("\n")
    if not lines[0].startswith("#version"):
        raise corrupt_file(path, "no #version header")
    merges = [tuple(line.split(" ")) for line in lines[1:] if line]
    if not all(len(merge) == 2 and all(merge) for merge in merges):
        raise corrupt_file(path, "a line is not two symbol strings separated by a space")
    return merges


def check_consistent(encoder: dict[str, int], bpe_merges: list[tuple[str, str]], folder: str) -> None:
    """Every byte and every merge result must have an id, or encoding would fail midway."""
    needed = [*bytes_to_unicode().values(), *(first + second for first, second in bpe_merges)]
    if not all(token in encoder for token in needed):
        raise VocabularyError(f"the vocabulary and the merges in {folder} do not match",
                              "delete them and run again to re-download")


def corrupt_file(path: str, what: str) -> VocabularyError:
    return VocabularyError(f"{path} is corrupt ({what})", DOWNLOAD_AGAIN)
