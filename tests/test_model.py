"""The forward pass and greedy generation (gpt2.py, gpt2_pico.py) against transformers.

Tolerance: our float32 logits against a float64 transformers model agree to 1e-4 absolute.
The fixtures' logits have a standard deviation near 1 and at most a few hundred terms per dot
product, so float32 round-off stays near 1e-5; a real mistake (a missing bias, a wrong GELU,
the mask off by one) moves logits by 1e-2 or more.
"""
import math

import numpy as np
import pytest

import gpt2
import gpt2_pico
import reference
import sampling
from conftest import load_fixture

ATOL = 1e-4


def stored_reference(name):
    with np.load(reference.REFERENCE_FILE) as data:
        return {key.split("/", 1)[1]: data[key] for key in data.files if key.startswith(name + "/")}


def report(ours, expected):
    """The max difference and the first values, so a failure shows how far off it is."""
    diff = np.abs(ours - expected)
    return f"max abs diff {diff.max():.3g}; ours {ours.ravel()[:4]}, expected {expected.ravel()[:4]}"


def test_building_blocks_keep_float32():
    x = np.random.default_rng(0).standard_normal((3, 8), dtype=np.float32)
    g, b = np.ones(8, np.float32), np.zeros(8, np.float32)
    w = np.ones((8, 4), np.float32)
    assert gpt2.gelu(x).dtype == np.float32
    assert gpt2.softmax(x).dtype == np.float32
    assert gpt2.layer_norm(x, g, b).dtype == np.float32
    assert gpt2.linear(x, w, b[:4]).dtype == np.float32
    assert gpt2.causal_mask(3, 2).dtype == np.float32
    assert sampling.sampling_probs(x[0], 0.7, 3, 0.9).dtype == np.float32


def test_gelu_is_gpt2s_tanh_approximation():
    """0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), not the exact erf form: at x = 1 the two
    differ by 1.5e-4, far more than float32 round-off (1e-7)."""
    x = np.array([-3.0, -1.0, 0.0, 0.5, 1.0, 4.0], dtype=np.float32)
    exact_tanh_form = [0.5 * v * (1 + math.tanh(math.sqrt(2 / math.pi) * (v + 0.044715 * v**3))) for v in x.tolist()]
    np.testing.assert_allclose(gpt2.gelu(x), exact_tanh_form, atol=1e-6)
    assert abs(float(gpt2.gelu(np.array([1.0], dtype=np.float32))[0]) - 0.8411920) < 1e-6


def test_gelu_equals_the_float64_tanh_form_everywhere_and_never_gives_a_subnormal():
    """gpt2.gelu computes the tanh form as x / (1 + exp(-2u)). Over x from -1e4 to 1e4, near 0 and in
    both tails: within 1e-6 of the tanh form in float64, absolute or relative (float32 round-off is
    6e-8 relative), exp never overflows, and no output is subnormal (they slow the next product)."""
    x = np.concatenate([np.linspace(-20, 20, 40001), np.geomspace(1e-30, 1e4, 2000), -np.geomspace(1e-30, 1e4, 2000)])
    x = x.astype(np.float32)
    x64 = x.astype(np.float64)
    expected = 0.5 * x64 * (1 + np.tanh(math.sqrt(2 / math.pi) * (x64 + 0.044715 * x64**3)))
    with np.errstate(over="raise"):
        ours = gpt2.gelu(x)
    assert ours.dtype == np.float32
    np.testing.assert_allclose(ours, expected, rtol=1e-6, atol=1e-6)
    tiny = np.finfo(np.float32).tiny
    assert not ((ours != 0) & (np.abs(ours) < tiny)).any()


def test_gelu_in_row_blocks_equals_the_float64_tanh_form_for_every_block_size(monkeypatch):
    """gpt2.gelu runs GELU_ROWS rows at a time; blocks of 1, 3 (7 rows: a partial last block) and
    64 (one block) give the tanh form within 1e-6, as at once, into a new float32 array."""
    x = np.random.default_rng(5).standard_normal((7, 33), dtype=np.float32) * 4
    x64 = x.astype(np.float64)
    expected = 0.5 * x64 * (1 + np.tanh(math.sqrt(2 / math.pi) * (x64 + 0.044715 * x64**3)))
    for rows in (1, 3, 64):
        monkeypatch.setattr(gpt2, "GELU_ROWS", rows)
        ours = gpt2.gelu(x)
        assert ours.dtype == np.float32 and ours.shape == x.shape
        np.testing.assert_allclose(ours, expected, rtol=1e-6, atol=1e-6, err_msg=f"GELU_ROWS={rows}")


def test_gelu_never_overflows_or_underflows_inside():
    """Both sides of the clamp on -2u: above 88.7 exp would overflow, and below -87 it would give
    subnormals (slow) and then 0 with an underflow; for x from 1e-10 to 1e4 in size, either sign,
    nothing over- or underflows. (Without the lower clamp, x = 20 already underflows.)"""
    size = np.concatenate([np.geomspace(1e-10, 1e4, 3000), np.linspace(0, 1e4, 3001)[1:]])
    x = np.concatenate([size, -size]).astype(np.float32)
    with np.errstate(over="raise", under="raise"):
        gpt2.gelu(x)


def test_layer_norm_of_a_low_variance_row_equals_the_float64_definition():
    """(x - mean) / sqrt(var + eps) * g + b. On a row whose variance (1e-6) is far below eps (1e-5),
    putting eps outside the square root, or dropping it, changes the output by more than 10%;
    float32 round-off here is near 1e-7 relative, so 1e-4 absolute (outputs of size ~0.3) is tight."""
    rng = np.random.default_rng(3)
    x = (1e-3 * rng.standard_normal((2, 64))).astype(np.float32)
    g = (1 + 0.1 * rng.standard_normal(64)).astype(np.float32)
    b = (0.1 * rng.standard_normal(64)).astype(np.float32)
    x64 = x.astype(np.float64)
    centered = x64 - x64.mean(axis=-1, keepdims=True)
    expected = centered / np.sqrt((centered**2).mean(axis=-1, keepdims=True) + 1e-5) * g + b
    ours = gpt2.layer_norm(x, g, b)
    assert ours.dtype == np.float32
    assert np.abs(ours - expected).max() <= 1e-4, report(ours, expected)
    assert np.abs(gpt2_pico.layer_norm(x, g, b) - expected).max() <= 1e-4


def test_causal_mask_lets_a_query_see_every_earlier_key_and_itself_only():
    mask = gpt2.causal_mask(2, 3)  # two new tokens at positions 3 and 4, five keys
    assert mask.shape == (2, 5)
    assert np.isneginf(mask).tolist() == [[False] * 4 + [True], [False] * 5]
    assert (mask[~np.isneginf(mask)] == 0).all()


def test_a_batch_gives_each_sequence_positions_from_its_own_cache_length():
    hparams, params = load_fixture("tiny-b")
    caches = [gpt2.KVCache(params, hparams["n_head"], 10) for _ in range(3)]
    caches[1].length = 4
    batch = gpt2.Batch([2, 1, 3], caches)
    assert batch.positions.tolist() == [0, 1, 4, 0, 1, 2]
    assert [cache.length for cache in caches] == [2, 5, 3], "building the batch claims the positions"
    assert batch.masks[1] is None, "one new token may see every key: no mask"


def test_sequences_batched_together_get_the_logits_each_gets_alone():
    """1e-4 absolute, as for the cache: sharing the matrix products changes only round-off, and each
    sequence attends over its own tokens only."""
    hparams, params = load_fixture("tiny-b")
    sequences = [reference.reference_tokens(hparams["n_vocab"], n, seed=n) for n in (5, 1, 17)]
    together = gpt2.transformer(sum(sequences, []), **params, n_head=hparams["n_head"],
                                batch=gpt2.Batch([len(s) for s in sequences]))
    begin = 0
    for sequence in sequences:
        alone = gpt2.transformer(sequence, **params, n_head=hparams["n_head"])
        assert np.abs(together[begin : begin + len(sequence)] - alone).max() <= ATOL
        begin += len(sequence)


def test_attention_in_query_blocks_equals_attention_at_once_for_every_block_size_and_offset():
    """causal_attention skips the keys after each block's last query; the skipped weights are exactly
    0 at once, so only round-off may differ: 1e-6 on weights of at most 1 and unit-variance values."""
    rng = np.random.default_rng(0)
    n_head, head_dim = 3, 8
    for n_new, start in ((20, 0), (20, 7), (7, 13)):
        q = rng.standard_normal((n_head, n_new, head_dim), dtype=np.float32)
        keys = rng.standard_normal((n_head, head_dim, start + n_new), dtype=np.float32)
        values = rng.standard_normal((n_head, start + n_new, head_dim), dtype=np.float32)
        mask = gpt2.causal_mask(n_new, start)
        at_once = gpt2.attention_weights(q, keys, mask) @ values
        for block in (1, 3, 5, 64):
            with pytest.MonkeyPatch.context() as patch:
                patch.setattr(gpt2, "QUERY_BLOCK", block)
                blocked = gpt2.causal_attention(q, keys, values, mask)
            assert blocked.dtype == np.float32
            np.testing.assert_allclose(blocked, at_once, rtol=0, atol=1e-6, err_msg=f"{n_new=} {start=} {block=}")


def test_logits_in_query_blocks_match_stored_transformers_reference(fixture_name, monkeypatch):
    """The fixtures' contexts (32 and 64) fit in one 64-query block; blocks of 5 make every long
    enough pass run in blocks, partial last block included. Same tolerance as at once."""
    monkeypatch.setattr(gpt2, "QUERY_BLOCK", 5)
    hparams, params = load_fixture(fixture_name)
    ref = stored_reference(fixture_name)
    tokens = ref["tokens"].tolist()
    for length in (6, 11, hparams["n_ctx"]):
        logits = gpt2.gpt2(tokens[:length], **params, n_head=hparams["n_head"])
        ours, expected = logits[:, ref["columns"]], ref["logits_columns"][:length]
        assert np.abs(ours - expected).max() <= ATOL, f"length {length}: {report(ours, expected)}"


def test_a_chunk_after_cached_tokens_runs_in_query_blocks_with_the_logits_of_one_pass(monkeypatch):
    """A 17-token chunk after 9 cached tokens, in blocks of 4: each block's keys run to its last
    query's position, 9 + its end. 1e-4, as for the cache."""
    hparams, params = load_fixture("tiny-b")
    tokens = reference.reference_tokens(hparams["n_vocab"], 26, seed=3)
    whole = gpt2.transformer(tokens, **params, n_head=hparams["n_head"])
    monkeypatch.setattr(gpt2, "QUERY_BLOCK", 4)
    cache = gpt2.KVCache(params, hparams["n_head"], 26)
    first = gpt2.transformer(tokens[:9], **params, n_head=hparams["n_head"], batch=gpt2.Batch([9], [cache]))
    rest = gpt2.transformer(tokens[9:], **params, n_head=hparams["n_head"], batch=gpt2.Batch([17], [cache]))
    assert np.abs(np.concatenate([first, rest]) - whole).max() <= ATOL


def test_a_pass_that_wants_some_rows_gives_those_rows_and_fills_the_caches_as_a_whole_pass():
    """Two sequences, rows 3, 4 and 9 wanted: only the last block drops rows, after every key and value
    is stored, so the rows equal a whole pass's and so does the next step on those caches (1e-5:
    products over fewer rows may round differently, and nothing else changes)."""
    hparams, params = load_fixture("tiny-b")
    n_head = hparams["n_head"]
    sequences = [reference.reference_tokens(hparams["n_vocab"], n, seed=n) for n in (5, 6)]
    results = {}
    for outputs in (None, [3, 4, 9]):
        caches = [gpt2.KVCache(params, n_head, 8) for _ in sequences]
        x = gpt2.transformer(sum(sequences, []), **params, n_head=n_head,
                             batch=gpt2.Batch([5, 6], caches, outputs=outputs))
        step = gpt2.transformer([7, 8], **params, n_head=n_head, batch=gpt2.Batch([1, 1], caches))
        results[outputs is None] = x, step
    (whole, whole_step), (some, some_step) = results[True], results[False]
    assert some.shape == (3, hparams["n_embd"]) and some.dtype == np.float32
    assert np.abs(some - whole[[3, 4, 9]]).max() <= 1e-5
    assert np.abs(some_step - whole_step).max() <= 1e-5


def test_a_batch_that_wants_every_row_selects_none():
    assert gpt2.Batch([2, 1], outputs=[0, 1, 2]).outputs is None, "a decoding step must not copy its rows"
    assert gpt2.Batch([2, 1], outputs=[1, 2]).outputs.tolist() == [1, 2]


def test_logits_are_float32_with_shape_n_seq_by_n_vocab(fixture_name):
    hparams, params = load_fixture(fixture_name)
    logits = gpt2.gpt2([1, 2, 3], **params, n_head=hparams["n_head"])
    assert logits.dtype == np.float32 and logits.shape == (3, hparams["n_vocab"])


def test_logits_match_stored_transformers_reference_for_every_length(fixture_name):
    """Every sequence length from 1 to n_ctx: the stored columns of every position, and at full
    length all 50,257 logits of the last position."""
    hparams, params = load_fixture(fixture_name)
    ref = stored_reference(fixture_name)
    tokens = ref["tokens"].tolist()
    assert len(tokens) == hparams["n_ctx"]
    for length in range(1, hparams["n_ctx"] + 1):
        logits = gpt2.gpt2(tokens[:length], **params, n_head=hparams["n_head"])
        ours, expected = logits[:, ref["columns"]], ref["logits_columns"][:length]
        assert np.abs(ours - expected).max() <= ATOL, f"length {length}: {report(ours, expected)}"
    assert np.abs(logits[-1] - ref["logits_last"]).max() <= ATOL, report(logits[-1], ref["logits_last"])


def test_pico_logits_match_stored_transformers_reference(fixture_name):
    hparams, params = load_fixture(fixture_name)
    ref = stored_reference(fixture_name)
    logits = gpt2_pico.gpt2(ref["tokens"].tolist(), **params, n_head=hparams["n_head"])
    assert logits.dtype == np.float32
    ours = logits[:, ref["columns"]]
    assert np.abs(ours - ref["logits_columns"]).max() <= ATOL, report(ours, ref["logits_columns"])


@pytest.fixture(scope="module")
def live_models():
    """transformers models on the fixtures' weights, when torch and transformers are installed."""
    pytest.importorskip("torch", reason="the live comparison needs torch==2.13.0 and transformers")
    pytest.importorskip("transformers", reason="the live comparison needs transformers")
    import utils

    models = {}
    for name in reference.FIXTURE_CONFIGS:
        hparams = reference.read_hparams(reference.fixture_dir(name))
        tensors = utils.map_checkpoint_tensors(reference.fixture_dir(name), hparams)
        models[name] = reference.hf_model(hparams, tensors)
    return models


def test_logits_match_live_transformers_for_every_length(fixture_name, live_models):
    hparams, params = load_fixture(fixture_name)
    tokens = reference.reference_tokens(hparams["n_vocab"], hparams["n_ctx"], seed=7)
    for length in range(1, hparams["n_ctx"] + 1):
        expected = reference.hf_logits(live_models[fixture_name], tokens[:length])
        ours = gpt2.gpt2(tokens[:length], **params, n_head=hparams["n_head"])
        assert np.abs(ours - expected).max() <= ATOL, f"length {length}: {report(ours, expected)}"


def test_greedy_generation_matches_live_transformers_generate(fixture_name, live_models):
    hparams, params = load_fixture(fixture_name)
    prompt = reference.reference_tokens(hparams["n_vocab"], 3, seed=11)
    n_new = hparams["n_ctx"] - len(prompt)
    expected = reference.hf_greedy(live_models[fixture_name], prompt, n_new)
    assert gpt2.generate(prompt, params, hparams["n_head"], n_new) == expected


def test_cached_logits_equal_a_full_forward_pass_at_every_step(fixture_name):
    hparams, params = load_fixture(fixture_name)
    tokens = reference.reference_tokens(hparams["n_vocab"], 5, seed=3)
    n_new = hparams["n_ctx"] - len(tokens)
    for token, cached_logits in gpt2.generate_steps(tokens, params, hparams["n_head"], n_new):
        full_logits = gpt2.gpt2(tokens, **params, n_head=hparams["n_head"])[-1]
        assert cached_logits.dtype == np.float32
        difference = np.abs(cached_logits - full_logits).max()
        assert difference <= ATOL, f"step {len(tokens)}: {report(cached_logits, full_logits)}"
        tokens.append(token)
    assert len(tokens) == hparams["n_ctx"]


@pytest.mark.parametrize("n_new", [1, 50, "fill"])
def test_gpt2_and_pico_choose_the_same_greedy_tokens(n_new):
    hparams, params = load_fixture("tiny-b")  # n_ctx 64, so 50 new tokens fit after the prompt
    prompt = reference.reference_tokens(hparams["n_vocab"], 4, seed=5)
    n_new = hparams["n_ctx"] - len(prompt) if n_new == "fill" else n_new
    ours = gpt2.generate(prompt, params, hparams["n_head"], n_new)
    assert len(ours) == n_new
    assert ours == gpt2_pico.generate(prompt, params, hparams["n_head"], n_new)


def test_greedy_generation_is_not_a_constant_sequence():
    """Guards the fixtures: if greedy output repeated one token, the tests above would prove little."""
    hparams, params = load_fixture("tiny-b")
    prompt = reference.reference_tokens(hparams["n_vocab"], 4, seed=5)
    assert len(set(gpt2.generate(prompt, params, hparams["n_head"], 40))) >= 5


def test_prompt_plus_new_tokens_may_fill_exactly_n_ctx():
    hparams, params = load_fixture("tiny-a")
    prompt = [464, 3290]
    out = gpt2.generate(prompt, params, hparams["n_head"], hparams["n_ctx"] - len(prompt))
    assert len(prompt) + len(out) == hparams["n_ctx"]


def test_a_prompt_longer_than_n_ctx_is_an_error_naming_both_lengths_before_any_work():
    hparams, params = load_fixture("tiny-a")
    unusable = dict(params, blocks=None)  # any forward pass would crash on this
    prompt = [464] * (hparams["n_ctx"] + 1)
    with pytest.raises(gpt2.ContextError, match="has 33 tokens, more than the model's context of 32 tokens"):
        next(gpt2.generate_steps(prompt, unusable, hparams["n_head"], 1))


def test_empty_inputs_are_an_error_that_says_how_to_sample_unconditionally():
    hparams, params = load_fixture("tiny-a")
    with pytest.raises(gpt2.ContextError, match="eot_token"):
        gpt2.generate([], params, hparams["n_head"], 1)


def test_kv_cache_is_one_float32_array_per_kind_for_all_layers_and_grows_when_it_must():
    hparams, params = load_fixture("tiny-b")
    cache = gpt2.KVCache(params, hparams["n_head"], 10)
    head_dim = hparams["n_embd"] // hparams["n_head"]
    assert cache.keys.shape == (hparams["n_layer"], hparams["n_head"], head_dim, 10)  # keys transposed, for q @ keys
    assert cache.values.shape == (hparams["n_layer"], hparams["n_head"], 10, head_dim)
    assert cache.keys.dtype == cache.values.dtype == np.float32
    cache.keys[..., :7] = 1.5
    assert cache.claim(7) == 0 and cache.claim(5) == 7
    assert cache.keys.shape[-1] >= 12 and (cache.keys[..., :7] == 1.5).all(), "growing keeps what was stored"
