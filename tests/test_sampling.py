"""Sampling (sampling.sampling_probs, sampling.make_picker) checked against its definition."""
import numpy as np
import pytest

import gpt2
import reference
import sampling
from conftest import load_fixture


def definition_probs(logits, temperature, top_k, top_p):
    """The textbook definition in float64, written as plainly as possible: softmax(logits / T);
    keep the k most likely; keep the smallest most-likely prefix whose renormalised mass reaches p."""
    logits = np.asarray(logits, dtype=np.float64) / temperature
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    ranked = sorted(range(len(probs)), key=lambda i: (-probs[i], i))
    if top_k:
        ranked = ranked[:top_k]
    total = sum(probs[i] for i in ranked)
    kept, mass = [], 0.0
    for i in ranked:
        kept.append(i)
        mass += probs[i] / total
        if mass >= top_p:
            break
    out = np.zeros_like(probs)
    out[kept] = probs[kept]
    return out / out.sum()


def random_logits(seed, n=200):
    return np.random.default_rng(seed).standard_normal(n, dtype=np.float32) * np.float32(2)


@pytest.mark.parametrize("temperature, top_k, top_p",
                         [(1.0, 0, 1.0), (0.7, 0, 1.0), (1.3, 10, 1.0), (1.0, 0, 0.9), (0.8, 20, 0.5), (2.0, 5, 0.3)])
def test_sampling_probs_equal_the_definition(temperature, top_k, top_p):
    """float32 against float64: 1e-6 absolute on probabilities that sum to 1."""
    for seed in range(20):
        logits = random_logits(seed)
        ours = sampling.sampling_probs(logits, temperature, top_k, top_p)
        np.testing.assert_allclose(ours, definition_probs(logits, temperature, top_k, top_p), atol=1e-6)


def test_temperature_zero_is_exactly_greedy():
    assert sampling.make_picker(temperature=0.0) is np.argmax
    hparams, params = load_fixture("tiny-a")
    prompt = reference.reference_tokens(hparams["n_vocab"], 3, seed=2)
    greedy = gpt2.generate(prompt, params, hparams["n_head"], 20)
    assert gpt2.generate(prompt, params, hparams["n_head"], 20, sampling.make_picker(0.0, 5, 0.5, seed=1)) == greedy


@pytest.mark.parametrize("temperature", [0.1, 1.0, 5.0, 100.0])
def test_top_k_1_at_any_temperature_is_greedy(temperature):
    pick = sampling.make_picker(temperature, top_k=1, seed=0)
    for seed in range(50):
        logits = random_logits(seed)
        assert pick(logits) == int(np.argmax(logits))


def test_a_tiny_top_p_keeps_only_the_most_likely_token():
    pick = sampling.make_picker(1.0, top_p=1e-6, seed=0)
    for seed in range(50):
        logits = random_logits(seed)
        assert pick(logits) == int(np.argmax(logits))


def test_sampled_frequencies_match_the_filtered_distribution():
    """100,000 draws: each kept token's count is within 5 standard deviations of n * p
    (a false alarm has probability about 1e-6 per token), and filtered tokens never appear."""
    logits = random_logits(42, n=30)
    temperature, top_k, top_p, n = 0.8, 12, 0.9, 100_000
    expected = definition_probs(logits, temperature, top_k, top_p)
    pick = sampling.make_picker(temperature, top_k, top_p, seed=123)
    counts = np.bincount([pick(logits) for _ in range(n)], minlength=len(logits))
    assert counts[expected == 0].sum() == 0
    sigma = np.sqrt(n * expected * (1 - expected))
    assert np.all(np.abs(counts - n * expected) <= 5 * sigma + 1), (counts, n * expected)
    assert (expected > 0).sum() >= 3, "the filters should leave several tokens for this test to mean much"


def test_the_same_seed_gives_the_same_tokens_and_another_seed_differs():
    hparams, params = load_fixture("tiny-a")
    prompt = reference.reference_tokens(hparams["n_vocab"], 3, seed=2)

    def sample(seed):
        return gpt2.generate(prompt, params, hparams["n_head"], 25, sampling.make_picker(1.0, seed=seed))

    assert sample(7) == sample(7)
    assert sample(7) != sample(8)
