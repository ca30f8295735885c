"""The engine: requests that join and leave a shared forward pass at any step.

The reference for every request is the same request generated alone (gpt2.generate_steps, or the
engine with nothing else running). The fixtures' greedy margins are at least 0.014 (tests/reference.py),
far above the ~1e-6 round-off that sharing a pass can change, so greedy tokens must be equal.
Seeded samples use top_k 10 for the same reason (test_batch.py explains). No test depends on timing.
"""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gpt2
import reference
from conftest import load_fixture
from encoder import get_encoder
from engine import Engine
from settings import Settings, SettingsError

N_HEAD = {"tiny-a": 2, "tiny-b": 4}


@pytest.fixture(scope="module")
def model():
    hparams, params = load_fixture("tiny-b")  # n_ctx 64
    return hparams, params, get_encoder("tiny-b", reference.FIXTURES_DIR)


def make_engine(model, max_rows=3, prefill_chunk=7):
    hparams, params, encoder = model
    return Engine(params, hparams["n_head"], encoder.eot_token, encoder.decode_bytes, max_rows, prefill_chunk)


def run_with_arrivals(engine, jobs, arrivals):
    """Submit job i after arrivals[i] more steps (0: at once); step until all are done."""
    requests, waiting = [None] * len(jobs), list(range(len(jobs)))
    steps_to_wait = list(arrivals)
    while waiting or engine.busy:
        for i in list(waiting):
            if steps_to_wait[i] <= 0:
                prompt, job_settings, seed = jobs[i]
                requests[i] = engine.submit(prompt, job_settings, seed)
                waiting.remove(i)
            steps_to_wait[i] -= 1
        engine.step()
    return requests


def alone(model, prompt, job_settings, seed=None):
    """The same request in an engine of its own."""
    engine = make_engine(model, max_rows=1)
    request = engine.submit(prompt, job_settings, seed)
    for _ in engine.run():
        pass
    return request.continuation


def test_greedy_tokens_with_random_arrivals_equal_each_requests_solo_run(model):
    hparams, params, _ = model
    rng = np.random.default_rng(0)
    jobs = [(reference.reference_tokens(hparams["n_vocab"], int(rng.integers(1, 60)), seed=i),
             Settings(max_tokens=int(rng.integers(1, 90)), ignore_eos=True, context_keep=20), None)
            for i in range(10)]
    requests = run_with_arrivals(make_engine(model), jobs, rng.integers(0, 40, len(jobs)).tolist())
    for request, (prompt, job_settings, _) in zip(requests, jobs):
        expected = gpt2.generate(prompt, params, hparams["n_head"], job_settings.max_tokens, keep=20)
        assert request.continuation.tokens == expected
        assert request.continuation.finish_reason == "length"


def test_seeded_samples_with_random_arrivals_equal_each_requests_solo_run(model):
    hparams, _, _ = model
    rng = np.random.default_rng(1)
    jobs = [(reference.reference_tokens(hparams["n_vocab"], int(rng.integers(1, 30)), seed=i),
             Settings(max_tokens=int(rng.integers(1, 40)), temperature=0.9, top_k=10, seed=i,
                      presence_penalty=0.5), None) for i in range(8)]
    requests = run_with_arrivals(make_engine(model), jobs, rng.integers(0, 20, len(jobs)).tolist())
    for request, (prompt, job_settings, seed) in zip(requests, jobs):
        assert request.continuation.tokens == alone(model, prompt, job_settings, seed).tokens


def test_a_request_joins_while_others_are_generating_and_its_prompt_runs_in_chunks(model):
    hparams, _, _ = model
    engine = make_engine(model, max_rows=2, prefill_chunk=5)
    first = engine.submit([464, 3290], Settings(max_tokens=30, ignore_eos=True))
    engine.step()
    engine.step()
    assert len(first.continuation.tokens) == 2
    long_prompt = reference.reference_tokens(hparams["n_vocab"], 23, seed=4)
    second = engine.submit(long_prompt, Settings(max_tokens=3, ignore_eos=True))
    for _ in range(4):  # 23 tokens in chunks of 5: 4 steps of prompt, each also giving `first` a token
        engine.step()
        assert not second.continuation.tokens
    engine.step()
    assert len(second.continuation.tokens) == 1 and len(first.continuation.tokens) == 7
    assert second.continuation.tokens[:1] == alone(model, long_prompt, Settings(max_tokens=1)).tokens


def test_a_finished_request_leaves_at_once_and_a_waiting_one_takes_its_row(model):
    engine = make_engine(model, max_rows=1)
    short = engine.submit([464], Settings(max_tokens=2, ignore_eos=True))
    waiting = engine.submit([3290], Settings(max_tokens=2, ignore_eos=True))
    engine.step()
    engine.step()
    assert short.done and short.cache is None, "its cache is freed when it finishes"
    assert engine.running == [] and not waiting.continuation.tokens
    engine.step()
    assert engine.running == [waiting] and len(waiting.continuation.tokens) == 1


def test_a_cancelled_request_frees_its_row_for_the_next_step(model):
    engine = make_engine(model, max_rows=1)
    cancelled = engine.submit([464], Settings(max_tokens=50, ignore_eos=True))
    waiting = engine.submit([3290], Settings(max_tokens=5, ignore_eos=True))
    engine.step()
    cancelled.cancel()
    events = engine.step()
    assert (cancelled, "cancelled") in [(request, event.finish_reason) for request, event in events]
    assert cancelled.cache is None and engine.running == [waiting]
    assert len(waiting.continuation.tokens) == 1, "the freed row was used in the same step"


def test_a_request_ends_at_its_stop_text_with_finish_reason_stop(model):
    encoder = model[2]
    plain = alone(model, [464, 3290], Settings(max_tokens=20, ignore_eos=True))
    stop = plain.text[4:7]
    stopped = alone(model, [464, 3290], Settings(max_tokens=20, ignore_eos=True, stop=(stop,)))
    assert stopped.finish_reason == "stop" and stopped.text == plain.text[: plain.text.find(stop)]
    assert encoder.decode(stopped.tokens).startswith(stopped.text + stop)


def test_a_request_ends_at_end_of_text_without_it(model):
    hparams, params, encoder = model
    tokens = gpt2.generate([464, 3290], params, hparams["n_head"], 20)
    first_new = next(i for i in range(1, 20) if tokens[i] not in tokens[:i])
    engine = Engine(params, hparams["n_head"], tokens[first_new], encoder.decode_bytes)  # pretend it is <|endoftext|>
    request = engine.submit([464, 3290], Settings(max_tokens=20))
    for _ in engine.run():
        pass
    assert request.continuation.tokens == tokens[:first_new] and request.continuation.finish_reason == "stop"


def test_logprobs_are_the_log_softmax_the_token_was_chosen_from_with_the_argmax_on_top(model):
    """float32 log-softmax against float64: 1e-5 absolute on logprobs of size ~11."""
    hparams, params, _ = model
    prompt = [464, 3290, 318]
    request = alone(model, prompt, Settings(max_tokens=4, logprobs=3, ignore_eos=True))
    tokens = list(prompt)
    for token, logprob, top in zip(request.tokens, request.logprobs, request.top):
        logits = gpt2.gpt2(tokens, **params, n_head=hparams["n_head"])[-1].astype(np.float64)
        expected = logits - np.log(np.exp(logits - logits.max()).sum()) - logits.max()
        assert abs(logprob - expected[token]) <= 1e-5
        assert [t for t, _ in top] == np.argsort(-expected, kind="stable")[:3].tolist() and top[0][0] == token
        tokens.append(token)


def test_echo_with_logprobs_gives_the_prompts_logprobs_as_scoring_does(model):
    """Within 1e-5 of gpt2.token_logprobs (what --score --json prints): the same float32 computation."""
    hparams, params, _ = model
    prompt = reference.reference_tokens(hparams["n_vocab"], 40, seed=9)
    engine = make_engine(model, max_rows=2, prefill_chunk=6)
    other = engine.submit([464], Settings(max_tokens=30, ignore_eos=True))
    engine.step()
    echoed = engine.submit(prompt, Settings(max_tokens=0, echo=True, logprobs=2))
    for _ in engine.run():
        pass
    expected = gpt2.token_logprobs(prompt, params, hparams["n_head"], stride=32)
    assert np.abs(np.array(echoed.prompt_logprobs) - expected).max() <= 1e-5
    assert echoed.continuation.tokens == [] and echoed.continuation.finish_reason == "length"
    assert len(echoed.prompt_top) == len(prompt) - 1 and other.done


def test_max_tokens_zero_generates_nothing(model):
    request = alone(model, [464], Settings(max_tokens=0))
    assert request.tokens == [] and request.finish_reason == "length"


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_any_arrival_order_and_mix_of_lengths_stops_and_windows_gives_each_its_solo_output(model, data):
    hparams, _, encoder = model
    n_jobs = data.draw(st.integers(1, 5))
    jobs = []
    for i in range(n_jobs):
        prompt = reference.reference_tokens(hparams["n_vocab"], data.draw(st.integers(1, 64)), seed=i)
        stops = tuple(data.draw(st.lists(st.sampled_from(["e", " t", "\n", "zz", "."]), max_size=2)))
        job_settings = Settings(max_tokens=data.draw(st.integers(0, 80)), stop=stops,
                                context_keep=data.draw(st.integers(1, 63)), ignore_eos=data.draw(st.booleans()))
        jobs.append((prompt, job_settings, None))
    arrivals = data.draw(st.lists(st.integers(0, 30), min_size=n_jobs, max_size=n_jobs))
    engine = make_engine(model, max_rows=data.draw(st.integers(1, 4)), prefill_chunk=data.draw(st.integers(1, 70)))
    requests = run_with_arrivals(engine, jobs, arrivals)
    for request, (prompt, job_settings, _) in zip(requests, jobs):
        solo = alone(model, prompt, job_settings)
        assert (request.continuation.tokens, request.continuation.text, request.continuation.finish_reason) == \
            (solo.tokens, solo.text, solo.finish_reason)
    assert not engine.running


# ---------------------------------------------------------------- settings check their own values


BAD_VALUES = {
    "max_tokens": [-1, 1.5, "3", True, None, float("nan")],
    "temperature": [-0.1, 2.5, float("nan"), float("inf"), "1", None, 1e-45],
    "top_p": [-0.01, 1.5, float("nan"), float("inf"), "0.5"],
    "top_k": [-1, 2.0, "5", float("nan")],
    "stop": [3, [""], [None], ["a", 1], "", ["\ud800"]],
    "seed": [-1, 1.5, "7", 2**64, float("inf")],
    "presence_penalty": [-2.5, 2.01, float("nan"), float("-inf"), "1"],
    "frequency_penalty": [3, -3, float("nan"), float("inf")],
    "repetition_penalty": [0, -1, 1e-45, 1e7, float("nan"), float("inf")],
    "logit_bias": [{"x": 1}, {"5": 101}, {"5": float("nan")}, {"-1": 3}, [5], "5"],
    "logprobs": [-1, 6, 2.0, "3", float("nan")],
    "echo": [1, "yes", None],
    "context_keep": [0, -5, 2.5],
}


@pytest.mark.parametrize("field, value", [(field, value) for field, values in BAD_VALUES.items() for value in values])
def test_a_bad_setting_is_a_one_line_error_naming_the_field_and_its_range(field, value):
    with pytest.raises(SettingsError) as excinfo:
        Settings(**{field: value})
    message = str(excinfo.value)
    assert message.startswith(f"{field}") and "\n" not in message, message


@pytest.mark.parametrize("changes", [dict(temperature=2, top_p=0, top_k=3), dict(stop="x", seed=0),
                                     dict(logit_bias={"50256": -100, 7: 2.5}, logprobs=5, echo=True)])
def test_settings_in_range_are_accepted(changes):
    Settings(**changes)


def test_settings_from_json_keep_the_defaults_for_absent_and_null_fields():
    defaults = Settings(max_tokens=40, temperature=0.7)
    record = Settings.from_json({"prompt": "hi", "max_tokens": 3, "temperature": None, "stop": ["x"]}, defaults)
    assert (record.max_tokens, record.temperature, record.stop) == (3, 0.7, ("x",))


def test_top_p_zero_keeps_only_the_most_likely_token():
    import sampling

    logits = np.array([0.5, 2.0, 1.0], dtype=np.float32)
    assert sampling.sampling_probs(logits, 1.0, 0, 0.0).tolist() == [0.0, 1.0, 0.0]
