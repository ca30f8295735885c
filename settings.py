"""One request's generation settings, with the names and ranges of OpenAI's completions API where
it has them: what every front end (the command line, a JSON Lines record, the server's JSON) builds
and what the engine runs. Settings check their own values, so a bad one is refused with the field's
name and its allowed range before any work, whoever built it."""
import dataclasses
import math
from typing import Any

from errors import GPT2Error

MAX_LOGPROBS = 5  # OpenAI's completions API returns at most 5 alternatives per token
MAX_LOGIT_BIAS = 100  # OpenAI's range for a logit bias: -100 to 100
# The smallest and largest factors the sampler takes. Logits are float32: a temperature or repetition
# penalty whose float32 is 0 or whose reciprocal overflows gives inf and then NaN probabilities. Within
# these bounds a logit of up to 1e26 divided by both stays finite; beyond them nothing is gained: 1e-6
# is as good as greedy, 1e6 as good as uniform.
SMALLEST_FACTOR, LARGEST_FACTOR = 1e-6, 1e6
MAX_TEMPERATURE = 2  # OpenAI's range: 0 to 2


class SettingsError(GPT2Error, ValueError):
    """A setting out of its range or of the wrong type; the message names the field and the range."""


@dataclasses.dataclass(frozen=True)
class Settings:
    max_tokens: int = 16  # how many tokens to generate at most
    temperature: float = 0.0  # 0: greedy; higher: more random (OpenAI: 0 to 2)
    top_p: float = 1.0  # sample among the most likely tokens holding this much probability (0 keeps the top one)
    top_k: int = 0  # sample among the k most likely tokens (0: all)
    stop: tuple[str, ...] = ()  # end where the continuation first contains one of these texts
    seed: int | None = None  # the same seed gives the same sample
    presence_penalty: float = 0.0  # subtract from the logit of every token generated so far (-2 to 2)
    frequency_penalty: float = 0.0  # subtract this times a token's count so far (-2 to 2)
    repetition_penalty: float = 1.0  # transformers' penalty on every token seen, prompt included (1: off)
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias added to its logit) pairs
    logprobs: int | None = None  # None: none; k: each token's logprob and the k most likely alternatives
    echo: bool = False  # the prompt's tokens come back too, with their logprobs
    ignore_eos: bool = False  # go on after <|endoftext|>
    context_keep: int | None = None  # past n_ctx, go on from the last K tokens (None: n_ctx // 2)

    def __post_init__(self) -> None:
        whole("max_tokens", self.max_tokens, 0)
        number("temperature", self.temperature, 0, MAX_TEMPERATURE)
        if 0 < self.temperature < SMALLEST_FACTOR:
            raise SettingsError(f"temperature: {self.temperature!r} is out of range: use 0 (greedy) or a number "
                                f"from {SMALLEST_FACTOR:g} to {MAX_TEMPERATURE}")
        number("top_p", self.top_p, 0, 1)
        whole("top_k", self.top_k, 0)
        stops = (self.stop,) if isinstance(self.stop, str) else self.stop
        if not isinstance(stops, (list, tuple)) or not all(isinstance(s, str) and s for s in stops):
            raise SettingsError(f"stop: {self.stop!r} must be a text or a list of non-empty texts")
        for text in stops:
            check_encodable("stop", text)
        object.__setattr__(self, "stop", tuple(stops))
        if self.seed is not None:
            whole("seed", self.seed, 0, 2**63 - 1)
        number("presence_penalty", self.presence_penalty, -2, 2)
        number("frequency_penalty", self.frequency_penalty, -2, 2)
        number("repetition_penalty", self.repetition_penalty, SMALLEST_FACTOR, LARGEST_FACTOR)
        object.__setattr__(self, "logit_bias", logit_bias_pairs(self.logit_bias))
        if self.logprobs is not None:
            whole("logprobs", self.logprobs, 0, MAX_LOGPROBS)
        for field in ("echo", "ignore_eos"):
            if not isinstance(getattr(self, field), bool):
                raise SettingsError(f"{field}: {getattr(self, field)!r} must be true or false")
        if self.context_keep is not None:
            whole("context_keep", self.context_keep, 1)

    @classmethod
    def from_json(cls, record: dict, defaults: "Settings | None" = None, where: str = "") -> "Settings":
        """Settings from a JSON object's fields of the same names; absent fields keep `defaults`'.
        Unknown fields are left to the caller (a record also holds its prompt)."""
        base = dataclasses.asdict(defaults or cls())
        given = {name: record[name] for name in base if record.get(name) is not None}  # null: the default
        if isinstance(given.get("stop"), list):
            given["stop"] = tuple(given["stop"])
        if isinstance(given.get("logit_bias"), dict):
            given["logit_bias"] = tuple(given["logit_bias"].items())
        try:
            return cls(**{**base, **given})
        except SettingsError as e:
            raise SettingsError(f"{where}{e}") from None

    def with_changes(self, **changes: Any) -> "Settings":
        return dataclasses.replace(self, **changes)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def check_for_model(self, n_vocab: int, n_ctx: int) -> None:
        """What only the model can rule out: a logit bias on an id it does not have; a context_keep that
        leaves no room for a new token."""
        for token, _ in self.logit_bias:
            if token >= n_vocab:
                raise SettingsError(f"logit_bias: token id {token} is not in the model's vocabulary of {n_vocab}")
        if self.context_keep is not None and self.context_keep >= n_ctx:
            raise SettingsError(f"context_keep: {self.context_keep} must be below the model's context of "
                                f"{n_ctx} tokens")


def whole(field: str, value: object, low: int, high: int | None = None) -> None:
    if type(value) is not int or value < low or (high is not None and value > high):
        allowed = f"a whole number from {low} to {high}" if high is not None else f"a whole number of at least {low}"
        raise SettingsError(f"{field}: {value!r} is out of range: use {allowed}")


def number(field: str, value: object, low: float, high: float) -> None:
    if type(value) not in (int, float) or not (math.isfinite(value) and low <= value <= high):
        raise SettingsError(f"{field}: {value!r} is out of range: use a number from {low:g} to {high:g}")


def check_encodable(field: str, text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise SettingsError(f"{field}: {text!r} holds a lone surrogate, which is not text: remove it") from None


def logit_bias_pairs(bias: object) -> tuple[tuple[int, float], ...]:
    """OpenAI's {"token id": bias} (ids may come as strings, as JSON keys do) as sorted (id, bias) pairs."""
    items = bias.items() if isinstance(bias, dict) else bias
    if not isinstance(items, (list, tuple, type({}.items()))):
        raise SettingsError(f"logit_bias: {bias!r} must map token ids to numbers from -100 to 100")
    pairs = {}
    for item in items:
        if not (isinstance(item, (list, tuple)) and len(item) == 2):
            raise SettingsError(f"logit_bias: {item!r} must be a token id and a number from -100 to 100")
        token, value = item
        if isinstance(token, str) and token.isascii() and token.isdigit():
            token = int(token)
        whole("logit_bias token id", token, 0)
        number(f"logit_bias[{token}]", value, -MAX_LOGIT_BIAS, MAX_LOGIT_BIAS)
        pairs[token] = float(value)
    return tuple(sorted(pairs.items()))
