"""No float32 subnormals (below 1.18e-38, but not 0) in the attention weights (issue 21).

exp of a score far below its row's maximum gives a subnormal; products and exp on subnormal inputs
can be many times slower. Scaling the fixture's query and key weights by 30 multiplies every score
by 900, so that rows are very peaked: without the clamp before exp, these weights hold subnormals.
"""
import copy

import numpy as np

import gpt2
from conftest import load_fixture

TINY = np.finfo(np.float32).tiny  # the smallest normal float32


class AttentionRecorder:
    """The trace hook of gpt2.Batch: keeps every layer's attention weights, [H, T, K] per sequence."""

    def __init__(self):
        self.weights = []

    def attention(self, probs):
        self.weights.append(probs.copy())

    def residual(self, x):
        pass


def peaked_fixture(scale=30.0):
    """tiny-a with its query and key weights (the first 2 * n_embd columns of c_attn) times `scale`."""
    hparams, params = load_fixture("tiny-a")
    params = copy.deepcopy(params)
    n_embd = hparams["n_embd"]
    for block in params["blocks"]:
        block["attn"]["c_attn"]["w"][:, : 2 * n_embd] *= np.float32(scale)
        block["attn"]["c_attn"]["b"][: 2 * n_embd] *= np.float32(scale)
    return hparams, params


def recorded_weights(prompts, decode_steps=0):
    """Attention weights of one pass over the prompts together (each with its own cache), then
    decode_steps one-token steps (no mask)."""
    hparams, params = peaked_fixture()
    caches = [gpt2.KVCache(params, hparams["n_head"], len(p) + decode_steps) for p in prompts]
    recorder = AttentionRecorder()
    batch = gpt2.Batch([len(p) for p in prompts], caches, trace=recorder)
    gpt2.transformer(sum(prompts, []), **params, n_head=hparams["n_head"], batch=batch)
    for step in range(decode_steps):
        batch = gpt2.Batch([1] * len(prompts), caches, trace=recorder)
        gpt2.transformer([1000 + step] * len(prompts), **params, n_head=hparams["n_head"], batch=batch)
    return recorder.weights


PROMPT = list(range(100, 2900, 100))  # 28 tokens, within tiny-a's context of 32


def test_peaked_attention_weights_are_float32_and_never_subnormal():
    weights = recorded_weights([PROMPT], decode_steps=3)
    assert len(weights) == 2 * 4  # 2 layers, a pass over the prompt and 3 decode steps
    for probs in weights:
        assert probs.dtype == np.float32
        subnormal = (probs != 0) & (np.abs(probs) < TINY)
        assert not subnormal.any(), f"{subnormal.sum()} subnormal weights, the smallest {probs[subnormal].min():.3g}"


def test_the_prompt_is_peaked_enough_to_need_the_clamp():
    """Guards the test above: many visible scores lie over 80 below their row's max, where the clamp
    holds them (weight exp(-80) * the row's largest weight); a plain exp would give them 1e-35 or less,
    and past 87 below, subnormals. (Checked: without the clamp, the test above fails.)"""
    for probs in recorded_weights([PROMPT]):
        visible = np.tril(np.ones(probs.shape[-2:], bool))
        at_floor = np.isclose(probs, np.exp(np.float32(-80)) * probs.max(axis=-1, keepdims=True), rtol=1e-5, atol=0)
        assert at_floor[:, visible].mean() > 0.1, f"only {at_floor.mean():.1%} of the weights are held by the clamp"


def test_masked_weights_are_exactly_zero_and_visible_ones_are_not():
    """Two prompts in one pass: each one's causal mask, and float32 row sums of up to 28 terms within 1e-6 of 1."""
    weights = recorded_weights([PROMPT, PROMPT[:20]])
    for probs in weights:  # [H, T, T] for each sequence in turn
        visible = np.tril(np.ones(probs.shape[-2:], bool))
        assert np.all(probs[:, ~visible] == 0)
        assert np.all(probs[:, visible] > 0)
        np.testing.assert_allclose(probs.sum(axis=-1), 1, rtol=1e-6)
    assert [probs.shape[-1] for probs in weights] == [28, 20, 28, 20]


def test_a_trace_sees_whole_weights_when_attention_runs_in_query_blocks(monkeypatch):
    """In blocks of 6 the 28-token prompt's weights are computed 6 rows at a time; the trace still
    gets each layer's [H, 28, 28], masked weights exactly 0, equal to the weights at once within 1e-4:
    the fixture's scores are 900 times the usual, so the first layer's round-off (1e-13 here) grows
    to about 1e-5 in the second layer's weights."""
    at_once = recorded_weights([PROMPT])
    monkeypatch.setattr(gpt2, "QUERY_BLOCK", 6)
    blocked = recorded_weights([PROMPT])
    assert [w.shape for w in blocked] == [w.shape for w in at_once]
    for probs, expected in zip(blocked, at_once):
        visible = np.tril(np.ones(probs.shape[-2:], bool))
        assert np.all(probs[:, ~visible] == 0)
        np.testing.assert_allclose(probs, expected, rtol=0, atol=1e-4)
