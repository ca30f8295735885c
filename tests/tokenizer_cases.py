"""Deterministic sample texts for comparing encoder.py with tiktoken, and the known differences.

Each kind of text comes from its own seeded random generator, so the cases are the same on every
run and on every machine; `all_cases()` returns them all (more than 50,000 strings).
"""
import random

END_OF_TEXT = "<|endoftext|>"


def all_cases() -> list[str]:
    return [
        *code_point_cases(),
        *emoji_cases(2_500),
        *whitespace_cases(5_000),
        *contraction_cases(3_000),
        *source_code_cases(2_000),
        *long_word_cases(),
        *number_cases(2_500),
        *mixed_script_cases(4_000),
        *end_of_text_cases(1_500),
    ]


# ---------------------------------------------------------------- every code point

SURROGATES = range(0xD800, 0xE000)  # not characters: a str holding one cannot be encoded as UTF-8
CODE_POINTS_PER_CASE = 32

# Where a code point is put. The neighbours decide how the pre-tokenizer groups it: after a space
# (which joins a letter, number or symbol but not whitespace), between letters or digits, before a
# contraction ("'s" is split off a letter but swallowed by a run of symbols), next to itself, ...
CONTEXTS = [
    "{}", " {}", "  {}", "\t{}", "a{}", "{}a", "7{}", "{}7", "{}'s", "'{}", "{}!", "{}\n", " {} ", "{}{}",
]


def code_point_cases() -> list[str]:
    """Every code point but the surrogates, in order, 32 per case, each in a random context."""
    rng = random.Random(1)
    code_points = [cp for cp in range(0x110000) if cp not in SURROGATES]
    cases = []
    for start in range(0, len(code_points), CODE_POINTS_PER_CASE):
        group = code_points[start : start + CODE_POINTS_PER_CASE]
        cases.append("".join(rng.choice(CONTEXTS).format(chr(cp), chr(cp)) for cp in group))
    return cases


# ---------------------------------------------------------------- emoji

ZWJ = "\u200d"  # zero width joiner: glues emoji into one picture (👩‍💻)
VS16 = "\ufe0f"  # variation selector 16: "show as emoji"
SKIN_TONES = [chr(cp) for cp in range(0x1F3FB, 0x1F400)]
EMOJI = list("😀😂🥲😍🤔🙃😭👍👋🙏💪👩👨🧑👧👦👶🧓❤♥✨🔥🎉🌍🐍🦀🍕☕🚀⭐💻📱🏳🏴⚽🤗🫠🫶")
GENDERS = ["\u2640", "\u2642"]  # ♀ ♂, as in 🏃‍♀️


def emoji_cases(count: int) -> list[str]:
    """ZWJ sequences, skin tones, flags (regional indicator pairs and tag sequences), keycaps."""
    rng = random.Random(2)
    makers = [
        lambda: rng.choice(EMOJI),
        lambda: rng.choice(EMOJI) + rng.choice(SKIN_TONES),
        lambda: ZWJ.join(rng.choice(EMOJI) for _ in range(rng.randint(2, 4))),
        lambda: rng.choice(EMOJI) + rng.choice(SKIN_TONES) + ZWJ + rng.choice(GENDERS) + VS16,
        lambda: regional_flag(rng),
        lambda: tag_flag(rng.choice(["gbeng", "gbsct", "gbwls"])),
        lambda: rng.choice("0123456789#*") + VS16 + "\u20e3",  # keycap: 1️⃣
    ]
    cases = []
    for _ in range(count):
        pieces = [rng.choice(makers)() for _ in range(rng.randint(1, 5))]
        cases.append(join_randomly(rng, pieces + rng.sample(WORDS["latin"], 2)))
    return cases


def tag_flag(region: str) -> str:
    """A black flag, the region spelled in tag characters, and a cancel tag: 🏴󠁧󠁢󠁳󠁣󠁴󠁿 for "gbsct"."""
    return "\U0001f3f4" + "".join(chr(0xE0000 + ord(c)) for c in region) + "\U000e007f"


def regional_flag(rng: random.Random) -> str:
    """Two regional indicator letters, e.g. 🇫🇷 (some pairs are no country: still valid text)."""
    return "".join(chr(0x1F1E6 + rng.randrange(26)) for _ in range(2))


# ---------------------------------------------------------------- whitespace

# All of Unicode's White_Space characters, "\r\n", and look-alikes that are not White_Space
# (zero width space, BOM, Mongolian vowel separator) or that Python's str.isspace() alone counts
# as space (\x1c-\x1f): the pre-tokenizer must follow Unicode, not str.isspace().
WHITESPACE = [
    " ", "\t", "\n", "\r", "\r\n", "\v", "\f", "\x85", "\xa0", "\u1680", *map(chr, range(0x2000, 0x200B)),
    "\u2028", "\u2029", "\u202f", "\u205f", "\u3000",
]
NOT_WHITESPACE = ["\u200b", "\ufeff", "\u180e", "\x1c", "\x1d", "\x1e", "\x1f"]


def whitespace_cases(count: int) -> list[str]:
    """Runs of all kinds of whitespace between, before and after words, including at the end."""
    rng = random.Random(3)
    cases = []
    for _ in range(count):
        pieces = []
        for _ in range(rng.randint(1, 5)):
            run = "".join(rng.choice(WHITESPACE + NOT_WHITESPACE[:1]) for _ in range(rng.randint(1, 6)))
            pieces += [run, rng.choice(WORDS["latin"] + ["42", "!", "'s", rng.choice(NOT_WHITESPACE)])]
        if rng.random() < 0.5:
            pieces = pieces[1:]  # start with a word, not whitespace
        if rng.random() < 0.5:
            pieces.append(rng.choice(WHITESPACE) * rng.randint(1, 4))  # trailing whitespace
        cases.append("".join(pieces))
    return cases


# ---------------------------------------------------------------- contractions

SUFFIXES = ["s", "t", "re", "ve", "m", "ll", "d"]


def contraction_cases(count: int) -> list[str]:
    """English contractions in mixed case ("DON'T", "We'Ll", "'s's"), with either apostrophe."""
    rng = random.Random(4)
    cases = []
    for _ in range(count):
        pieces = []
        for _ in range(rng.randint(1, 4)):
            word = random_case(rng, rng.choice(["don", "we", "it", "they", "i", "she", "", "'s", "x"]))
            apostrophe = rng.choice(["'", "'", "'", "\u2019", "''"])
            suffix = random_case(rng, rng.choice(SUFFIXES + ["S", "sS", "ll'll", "ss"]))
            pieces.append(word + apostrophe + suffix + rng.choice(["", "", "'", "'s", "x", "1", "!"]))
        cases.append(rng.choice([" ", "", "\n", "  "]).join(pieces))
    return cases


def random_case(rng: random.Random, word: str) -> str:
    return "".join(c.upper() if rng.random() < 0.5 else c for c in word)


# ---------------------------------------------------------------- source code

SNIPPETS = [
    'def greet(name: str) -> str:\n    """Say hello."""\n    return f"Hello, {name}!"\n',
    "for (int i = 0; i < n; ++i) {\n\tsum += a[i] * b[i];\n}\n",
    "const xs = [1, 2, 3].map((x) => x ** 2); // squares\nconsole.log(`${xs}`);\n",
    '<div class="note" id=\'x\'>&lt;p&gt; 5 &gt; 3 &amp;&amp; 2 &lt; 4</div>\n',
    '{"name": "gpt-2", "n_vocab": 50257, "tags": ["bpe", null, true], "pi": 3.14159e0}\n',
    "#!/bin/sh\nset -eu\nfor f in *.txt; do echo \"$f\" | tr a-z A-Z >> out.log 2>&1; done\n",
    "SELECT id, COUNT(*) AS n FROM tokens WHERE text LIKE '%ing' GROUP BY id HAVING n > 10;\n",
    "fn main() {\n    let v: Vec<u8> = b\"bytes\\x00\".to_vec();\n    println!(\"{:?}\", v);\n}\n",
    "\\begin{equation}\n  e^{i\\pi} + 1 = 0 \\quad \\forall x \\in \\mathbb{R}\n\\end{equation}\n",
    "    if (x != null && !x.isEmpty()) { return x.trim(); } else { throw new Error(\"empty\"); }\n",
    "import numpy as np\n\n\nx = np.zeros((3, 4), dtype=np.float32)  # 3x4\nprint(x.T @ x)\n",
    "# Title\n\n* item one\n* item __two__\n\n```python\nprint('hi')\n```\n",
]


def source_code_cases(count: int) -> list[str]:
    """Slices of code in several languages, re-indented with tabs or spaces, some with CRLF."""
    rng = random.Random(5)
    cases = []
    for _ in range(count):
        code = "".join(rng.sample(SNIPPETS, rng.randint(1, 3)))
        code = code.replace("    ", rng.choice(["    ", "\t", "  ", "        "]))
        if rng.random() < 0.3:
            code = code.replace("\n", "\r\n")
        start = rng.randrange(len(code))
        cases.append(code[start : start + rng.randint(1, 200)])
    return cases


# ---------------------------------------------------------------- long words

def long_word_cases() -> list[str]:
    """Single pre-tokens thousands of characters long, where naive merging is slowest."""
    rng = random.Random(6)
    letters = "".join(rng.choice("etaoinshrdlucmfwyp") for _ in range(2_000))
    return [
        "a" * 5_000,
        " " + "ab" * 2_000,
        "x" * 1_500 + "y" * 1_500,
        letters,
        " " + letters.upper(),
        "1234567890" * 300,
        "!" * 3_000,
        "=-" * 1_500,
        " " * 4_000,
        " " * 3_000 + "word",
        "\n" * 2_000,
        "漢字" * 800,
        "😀" * 1_000,
        "e\u0301" * 1_000,
        "Supercalifragilisticexpialidocious" * 60,
    ]


# ---------------------------------------------------------------- numbers

DIGITS = [
    "0123456789",  # ASCII
    "٠١٢٣٤٥٦٧٨٩",  # Arabic-Indic
    "०१२३४५६७८९",  # Devanagari
    "０１２３４５６７８９",  # fullwidth
    "²³¹¼½¾",  # superscripts and fractions (category No)
    "ⅠⅡⅢⅣⅫ",  # Roman numerals (category Nl)
]


def number_cases(count: int) -> list[str]:
    """Digit runs of several scripts, with separators, signs, units and spaces."""
    rng = random.Random(7)
    cases = []
    for _ in range(count):
        pieces = []
        for _ in range(rng.randint(1, 4)):
            digits = rng.choice(DIGITS[:1] * 4 + DIGITS)
            number = "".join(rng.choice(digits) for _ in range(rng.randint(1, 20)))
            prefix = rng.choice(["", "-", "+", "$", " ", "#"])
            pieces.append(prefix + number + rng.choice(["", ".5", ",000", "%", "km", "th", "'s"]))
        cases.append(rng.choice([" ", "", ", ", "/", "\n"]).join(pieces))
    return cases


# ---------------------------------------------------------------- mixed scripts

WORDS = {
    "latin": ["Hello", "world", "the", "tokenizer", "naïve", "café", "Straße", "ÆON", "jalapeño", "x"],
    "greek": ["καλημέρα", "κόσμε", "Ωμέγα"],
    "cyrillic": ["привет", "мир", "Ёлка"],
    "cjk": ["漢字", "日本語のテキスト", "中文", "ｶﾀｶﾅ", "𠀀𪚥"],
    "hangul": ["안녕하세요", "한국어", "\u1100\u1161\u11a8"],  # the last is a decomposed syllable
    "arabic": ["مرحبا", "العربية", "سَلَام"],
    "hebrew": ["שלום", "עִבְרִית"],
    "devanagari": ["नमस्ते", "हिन्दी", "क्षत्रिय"],
    "thai": ["สวัสดี", "ภาษาไทย"],
    "other": ["ሰላም", "ᏣᎳᎩ", "𐌰𐌱𐌲", "ꦗꦮ"],
}
COMBINING_MARKS = [chr(cp) for cp in range(0x300, 0x370)] + ["\u0654", "\u093c", "\u20dd"]
PUNCTUATION = ["", "", "", ",", ".", "!", "?", "«", "»", "“", "”", "—", "…", "、", "。", "-", "(", "؟"]


def mixed_script_cases(count: int) -> list[str]:
    """Words from many scripts, mixed, with punctuation and stray combining marks."""
    rng = random.Random(8)
    pool = [word for words in WORDS.values() for word in words]
    cases = []
    for _ in range(count):
        pieces = []
        for _ in range(rng.randint(1, 6)):
            word = rng.choice(pool)
            if rng.random() < 0.2:
                word += rng.choice(COMBINING_MARKS)
            pieces.append(word + rng.choice(PUNCTUATION))
        cases.append(join_randomly(rng, pieces))
    return cases


# ---------------------------------------------------------------- <|endoftext|>

NEAR_MISSES = ["<|endoftext|", "|endoftext|>", "<|ENDOFTEXT|>", "<| endoftext |>", "<<|endoftext|>>", "<|end"]


def end_of_text_cases(count: int) -> list[str]:
    """The literal "<|endoftext|>" among words and whitespace, repeated, and near misses."""
    rng = random.Random(9)
    pool = WORDS["latin"] + WORDS["cjk"] + [" ", "  ", "\n", "\n\n", "'s", "!", "42"]
    cases = []
    for _ in range(count):
        pieces = rng.sample(pool, rng.randint(0, 4))
        for _ in range(rng.randint(1, 3)):
            pieces.insert(rng.randint(0, len(pieces)), rng.choice([END_OF_TEXT] * 3 + NEAR_MISSES))
        cases.append(rng.choice(["", " "]).join(pieces))
    return cases


def join_randomly(rng: random.Random, pieces: list[str]) -> str:
    return "".join(piece + rng.choice([" ", " ", "", "\n", "  ", "\t"]) for piece in pieces).rstrip(" ")


# ---------------------------------------------------------------- known differences from tiktoken

# Code points that the `regex` package (2026.11.15, Unicode 18.0) classes as letters (\p{L}) or
# numbers (\p{N}) but tiktoken 0.14.0 does not: its Rust regex (regex-syntax 0.8.11, Unicode 16.0)
# sees unassigned code points, which fall in the class "anything else" ([^\s\p{L}\p{N}]). These are
# the characters added in Unicode 17.0 and 18.0 (e.g. CJK Extension J, 323B0-3347F). encoder.py
# follows the regex package, so the text is cut into words differently around these characters and
# the token ids can differ: "\u0558's" is [145, 246, 338] for encoder.py but [145, 246, 6, 82] for
# tiktoken ("'s" is split off a letter but swallowed by a run of symbols).
# Inclusive ranges (first, last), in hex as the Unicode charts print them.
NEWER_UNICODE_LETTERS = """
    0558 058B-058C 088F 0C5C 0CDC 208F 209D-209F A7CE-A7CF A7D2 A7D4 A7DD A7E2 A7F1 AB6C-AB6D
    107BB-107BF 10940-10959 10EC5-10EC7 10ED9-10EEE 11B0A 11DB0-11DDB 11DF1 16EA0-16EB8
    16EBB-16ED3 16FF2-16FF3 187F8-187FF 18CD6-18CDA 18D09-18D20 18D80-18DF2 18E00-19191
    191A0-191D2 1B123-1B128 1B168 1D6A6 1DF1F-1DF24 1DF2B-1DF81 1DF90-1DF96 1DFCD-1DFFF
    1E6C0-1E6DE 1E6E0-1E6E2 1E6E4-1E6E5 1E6E7-1E6ED 1E6F0-1E6F4 1E6FE-1E6FF 2B73A-2B73F 2B81E
    2CEA2-2CEAD 323B0-33479 3D000-3FC3F
"""
NEWER_UNICODE_NUMBERS = "11DE0-11DE9 1246F 12475-1247F 12550-12686 16FF4-16FF6"


def code_points(ranges: str) -> set[int]:
    """The code points of a list of ranges such as "0558 058B-058C"."""
    result = set()
    for item in ranges.split():
        first, _, last = item.partition("-")
        result.update(range(int(first, 16), int(last or first, 16) + 1))
    return result
