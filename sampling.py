"""Choosing each next token from the model's logits: penalties for repetition, then temperature,
top-k and top-p. gpt2.py's generation takes the choosers made here (np.argmax is greedy)."""
from typing import TYPE_CHECKING, Callable

import numpy as np

from gpt2 import softmax

if TYPE_CHECKING:
    from settings import Settings


def sampling_probs(logits: np.ndarray, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> np.ndarray:
    """The distribution a token is drawn from: softmax(logits / T), keeping only the top_k most likely
    tokens (0: all), then the smallest set of most likely tokens whose probability reaches top_p, renormalised.
    [n_vocab] -> [n_vocab]
    """
    probs = softmax(logits / np.float32(temperature))
    order = np.argsort(-probs, kind="stable")  # most likely first; ties keep the lower id first, like argmax
    kept = order[:top_k] if top_k else order
    kept_probs = probs[kept] / np.sum(probs[kept])
    mass_before = np.cumsum(kept_probs) - kept_probs  # probability of the tokens ranked above each one
    kept = kept[: max(1, np.count_nonzero(mass_before < top_p))]  # the first token always stays, even at top_p 0
    filtered = np.zeros_like(probs)
    filtered[kept] = probs[kept]
    return filtered / np.sum(filtered)


def repetition_penalty(logits: np.ndarray, seen: np.ndarray, penalty: float) -> None:
    """transformers' (the CTRL paper's) penalty, in place: for each id in `seen`, a positive logit is
    divided by `penalty` and a negative one multiplied by it, so that both become less likely."""
    scores = logits[seen]  # [n_seen]
    logits[seen] = np.where(scores < 0, scores * np.float32(penalty), scores / np.float32(penalty))


def frequency_presence_penalty(logits: np.ndarray, ids: np.ndarray, counts: np.ndarray,
                               frequency: float, presence: float) -> None:
    """OpenAI's penalties, in place: logit -= count * frequency + (count > 0) * presence, for the ids
    generated so far (`counts[i]` times each, all > 0)."""
    logits[ids] -= counts * np.float32(frequency) + np.float32(presence)


class Chooser:
    """Chooses the next tokens of one sequence, remembering them for the penalties.

    Calling it with a row of logits applies the penalties to that row in place (so a caller that
    shows the logits shows what the choice was made from), then picks greedily at temperature 0 or
    draws from sampling_probs, and records the token.
    """

    def __init__(self, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, seed: object = None,
                 repetition: float = 1.0, frequency: float = 0.0, presence: float = 0.0, prompt: list[int] = (),
                 logit_bias: tuple[tuple[int, float], ...] = ()):
        self.temperature, self.top_k, self.top_p = temperature, top_k, top_p
        self.bias_ids = np.array([token for token, _ in logit_bias], dtype=np.int64)
        self.bias = np.array([bias for _, bias in logit_bias], dtype=np.float32)
        self.rng = np.random.default_rng(seed)
        self.repetition, self.frequency, self.presence = repetition, frequency, presence
        self.seen = dict.fromkeys(prompt)  # prompt and generated ids, each once (a dict keeps their order)
        self.counts: dict[int, int] = {}  # generated id -> how many times, for frequency and presence

    def __call__(self, logits: np.ndarray) -> int:
        self.penalize(logits)
        token = int(np.argmax(logits)) if self.temperature == 0 else self.draw(logits)
        self.remember(token)
        return token

    def penalize(self, logits: np.ndarray) -> None:
        if self.repetition != 1 and self.seen:
            repetition_penalty(logits, np.fromiter(self.seen, dtype=np.int64), self.repetition)
        if (self.frequency or self.presence) and self.counts:
            ids, counts = np.array(list(self.counts)), np.array(list(self.counts.values()), dtype=np.float32)
            frequency_presence_penalty(logits, ids, counts, self.frequency, self.presence)
        if len(self.bias_ids):  # OpenAI's logit_bias, after the penalties: the caller's last word on a token
            logits[self.bias_ids] += self.bias

    def draw(self, logits: np.ndarray) -> int:
        cumulative = np.cumsum(sampling_probs(logits, self.temperature, self.top_k, self.top_p))
        # inverse transform sampling; the min guards against float32 round-off leaving the total below 1
        return min(int(np.searchsorted(cumulative, self.rng.random() * cumulative[-1], side="right")), len(logits) - 1)

    def remember(self, token: int) -> None:
        self.seen[token] = None
        self.counts[token] = self.counts.get(token, 0) + 1


def make_picker(temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, seed: object = None,
                repetition: float = 1.0, frequency: float = 0.0, presence: float = 0.0,
                prompt: list[int] = (), logit_bias: tuple[tuple[int, float], ...] = ()) -> Callable[[np.ndarray], int]:
    """pick(logits) -> token id. Plain greedy is np.argmax itself, so the default adds no work to a step."""
    if temperature == 0 and repetition == 1 and frequency == 0 and presence == 0 and not logit_bias:
        return np.argmax
    return Chooser(temperature, top_k, top_p, seed, repetition, frequency, presence, prompt, logit_bias)


def picker_for(settings: "Settings", seed: object, prompt: list[int]) -> Callable[[np.ndarray], int]:
    """make_picker with a request's settings; seed: what seeds its generator (settings.seed, or one
    derived from it, so that each prompt of a batch draws from its own)."""
    return make_picker(settings.temperature, settings.top_k, settings.top_p, seed, settings.repetition_penalty,
                       settings.frequency_penalty, settings.presence_penalty, prompt, settings.logit_bias)
