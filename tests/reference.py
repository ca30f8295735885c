"""What the tests compare against: the committed fixture models, the stored reference outputs, and
the live transformers model (references/transformers_model.py, shared with the benchmark).

tests/fixtures/reference.npz is written by `python tests/make_reference.py` from transformers, so
that the suite also checks the logits on machines without torch.
"""
import json
import os

import numpy as np

from references.transformers_model import (  # noqa: F401 (re-exported for the tests)
    hf_greedy,
    hf_logits,
    hf_model,
    hf_short_text_nll,
    hf_state_dict,
    hf_window_nll,
)

FIXTURES_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
REFERENCE_FILE = os.path.join(FIXTURES_DIR, "reference.npz")
FIXTURE_CONFIGS = ("tiny-a", "tiny-b")
N_COLUMNS = 1024  # vocabulary columns stored for every position (all 50,257 only at the last position)
CLI_PROMPT = "Alan Turing theorized that computers would one day become"
CLI_NEW_TOKENS = 16
REPETITION_PENALTIES = (1.3, 0.8)  # stored greedy continuations with transformers' repetition_penalty
# a text several times longer than the fixtures' contexts (32 and 64 tokens), for scoring
SCORE_TEXT = (
    "The tokenizer cuts a text into pieces, and the model reads the pieces one after another. At every "
    "position it guesses what comes next, and the guess is a probability for each of the 50,257 pieces it "
    "knows. Scoring a text asks how surprised the model is by what really came next: the negative "
    "logarithm of the probability it gave to the true piece, averaged over the text. Perplexity is the "
    "exponential of that average, so a perplexity of 20 means the model was, on average, as unsure as if it "
    "had to choose among 20 equally likely pieces. Texts longer than the context are read in windows that "
    "overlap, so that every piece is predicted with plenty of context before it. \u00c9t\u00e9, na\u00efve, "
    "\u65e5\u672c\u8a9e and \U0001F600 make sure the bytes of a character can be split across pieces."
)
SHORT_SCORE_TEXT = "A short text scores in a single window."


def fixture_dir(name):
    return os.path.join(FIXTURES_DIR, name)


def read_hparams(model_dir):
    with open(os.path.join(model_dir, "hparams.json")) as f:
        return json.load(f)


def reference_tokens(n_vocab, n_ctx, seed=0):
    """A fixed sequence of n_ctx token ids spread over the whole vocabulary."""
    return np.random.default_rng(seed).integers(0, n_vocab, size=n_ctx).tolist()


def reference_columns(n_vocab, seed=1):
    """The vocabulary columns stored for every position: a fixed random subset, sorted, plus the last id."""
    columns = np.random.default_rng(seed).choice(n_vocab - 1, size=N_COLUMNS - 1, replace=False)
    return np.sort(np.append(columns, n_vocab - 1))
