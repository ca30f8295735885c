"""The completions server, through the official `openai` client and raw HTTP, on 127.0.0.1 only.

Each server is a real `python gpt2.py --serve` process on a free port, serving the tiny-b fixture
(n_ctx 64); every fixture stops it at the end. Expected values come from the engine run in this
process (greedy tokens, whose margins are >= 0.014: see tests/reference.py) and from scoring
(gpt2.token_logprobs, what --score --json prints), never from the server itself.
"""
import json
import signal
import socket
import threading
import time
import urllib.request

import numpy as np
import psutil
import pytest

import gpt2
import reference
from api_server import ServerProcess
from conftest import load_fixture
from encoder import get_encoder
from engine import Engine
from settings import Settings

openai = pytest.importorskip("openai", reason="the server tests use the openai client (tests/requirements.txt)")
pytest.importorskip("fastapi", reason="--serve needs requirements-serve.txt")

MODEL_DIR = reference.fixture_dir("tiny-b")
MODEL = MODEL_DIR  # the served model's id is what --model named


@pytest.fixture(scope="module")
def server():
    process = ServerProcess(MODEL_DIR, "--max_batch", 4)
    yield process
    process.stop()


@pytest.fixture(scope="module")
def model():
    hparams, params = load_fixture("tiny-b")
    return hparams, params, get_encoder("tiny-b", reference.FIXTURES_DIR)


def solo(model, prompt, **settings):
    hparams, params, encoder = model
    engine = Engine(params, hparams["n_head"], encoder.eot_token, encoder.decode_bytes, max_rows=1)
    request = engine.submit(prompt, Settings(**settings))
    for _ in engine.run():
        pass
    return request.continuation


# ---------------------------------------------------------------- the openai client


def test_a_greedy_completion_equals_the_engines_solo_run(server, model):
    encoder = model[2]
    response = server.client().completions.create(model=MODEL, prompt="Hello there", max_tokens=12, temperature=0)
    expected = solo(model, encoder.encode("Hello there"), max_tokens=12)
    choice = response.choices[0]
    assert choice.text == expected.text and choice.finish_reason == expected.finish_reason
    assert response.object == "text_completion" and response.id.startswith("cmpl-")
    assert (response.usage.prompt_tokens, response.usage.completion_tokens) == (2, len(expected.tokens))


def test_a_stream_gives_the_same_text_in_chunks_and_usage_last(server):
    client = server.client()
    whole = client.completions.create(model=MODEL, prompt="Once upon", max_tokens=10, temperature=0).choices[0].text
    chunks = list(client.completions.create(model=MODEL, prompt="Once upon", max_tokens=10, temperature=0,
                                            stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole
    assert len([c for c in chunks if c.choices]) >= 5, "streamed a token at a time, not at the end"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 10
    assert len({c.created for c in chunks}) == 1


def test_n_choices_with_a_seed_are_reproducible_and_differ_from_each_other(server):
    client = server.client()
    ask = lambda seed: [c.text for c in client.completions.create(model=MODEL, prompt="The", max_tokens=8, n=3,
                                                                    temperature=1.0, seed=seed,
                                                                    extra_body={"top_k": 10}).choices]
    first = ask(5)
    assert first == ask(5) and len(set(first)) > 1 and first != ask(6)


def test_best_of_returns_the_candidate_with_the_highest_total_logprob(server):
    """best_of 3 draws the rows that n 3 draws with the same seed (row i is seeded [seed, i]), and keeps
    the one whose tokens' logprobs add up highest; user is accepted and ignored."""
    client = server.client()
    ask = dict(model=MODEL, prompt="The", max_tokens=6, temperature=1.0, seed=9, logprobs=0)
    candidates = client.completions.create(**ask, n=3).choices
    best = max(candidates, key=lambda c: sum(c.logprobs.token_logprobs))
    chosen = client.completions.create(**ask, best_of=3, user="someone").choices
    assert len(chosen) == 1 and chosen[0].text == best.text and len({c.text for c in candidates}) > 1


def test_a_stop_text_ends_the_choice_before_it(server):
    client = server.client()
    full = client.completions.create(model=MODEL, prompt="Hello", max_tokens=16, temperature=0).choices[0].text
    stop = full[5:8]
    choice = client.completions.create(model=MODEL, prompt="Hello", max_tokens=16, temperature=0,
                                       stop=[stop]).choices[0]
    assert choice.text == full[: full.find(stop)] and choice.finish_reason == "stop"


def test_logprobs_list_the_top_k_with_the_argmax_and_the_chosen_token(server, model):
    encoder = model[2]
    choice = server.client().completions.create(model=MODEL, prompt="Hello", max_tokens=5, temperature=0,
                                                logprobs=3).choices[0]
    expected = solo(model, encoder.encode("Hello"), max_tokens=5, logprobs=3)
    assert choice.logprobs.token_logprobs == pytest.approx(expected.logprobs, abs=1e-6)
    for token, top in zip(choice.logprobs.tokens, choice.logprobs.top_logprobs):
        assert len(top) == 3 and max(top, key=top.get) == token, "greedy: the chosen token is the argmax"
    assert choice.logprobs.text_offset[0] == 0


@pytest.mark.parametrize("max_tokens", [0, 1])
def test_echo_on_token_prompts_gives_the_logprobs_that_scoring_gives(server, model, max_tokens):
    """As lm-evaluation-harness's local-completions sends it: token-id prompts, echo, logprobs 1.
    Within 1e-5 of gpt2.token_logprobs (what --score --json prints)."""
    hparams, params, _ = model
    prompts = [reference.reference_tokens(hparams["n_vocab"], n, seed=n) for n in (9, 30)]
    response = server.client().completions.create(model=MODEL, prompt=prompts, max_tokens=max_tokens, echo=True,
                                                  logprobs=1, temperature=0)
    for prompt, choice in zip(prompts, response.choices):
        expected = gpt2.token_logprobs(prompt, params, hparams["n_head"], stride=32)
        values = choice.logprobs.token_logprobs
        assert values[0] is None and len(values) == len(prompt) + max_tokens
        assert np.abs(np.array(values[1 : len(prompt)]) - expected).max() <= 1e-5
        logits = gpt2.gpt2(prompt, **params, n_head=hparams["n_head"])
        for position, top in enumerate(choice.logprobs.top_logprobs[1 : len(prompt)]):
            argmax = model[2].decode([int(np.argmax(logits[position]))])
            assert argmax in top, "top_logprobs always holds the argmax"


def test_errors_arrive_as_the_clients_own_exceptions(server):
    client = server.client()
    with pytest.raises(openai.NotFoundError) as excinfo:
        client.completions.create(model="gpt-4", prompt="x", max_tokens=1)
    assert excinfo.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError, match="maximum context length is 64 tokens"):
        client.completions.create(model=MODEL, prompt="x", max_tokens=64)  # 1 + 64 tokens
    with pytest.raises(openai.BadRequestError, match="suffix is not supported"):
        client.completions.create(model=MODEL, prompt="x", max_tokens=1, suffix="y")


def test_a_prompt_and_max_tokens_beyond_the_context_is_a_400_naming_both_numbers(server):
    status, _, body = server.post("/v1/completions", {"model": MODEL, "prompt": [1] * 10, "max_tokens": 60})
    assert status == 400 and "64 tokens" in body["error"]["message"] and "70" in body["error"]["message"]


def test_an_api_key_is_required_on_v1_and_the_tokenizer_but_not_on_health():
    keyed = ServerProcess(MODEL_DIR, "--api_key", "sesame")
    try:
        with pytest.raises(openai.AuthenticationError):
            keyed.client("wrong").completions.create(model=MODEL, prompt="x", max_tokens=1)
        assert keyed.client("sesame").completions.create(model=MODEL, prompt="x", max_tokens=1).choices
        assert keyed.post("/tokenize", {"prompt": "hi"})[0] == 401
        assert keyed.post("/tokenize", {"prompt": "hi"}, {"Authorization": "Bearer sesame"})[0] == 200
        with urllib.request.urlopen(keyed.url + "/health", timeout=5) as response:
            assert response.status == 200
    finally:
        keyed.stop()


def test_a_full_queue_is_a_429_with_retry_after():
    small = ServerProcess(MODEL_DIR, "--max_queue", 2)
    try:
        with pytest.raises(openai.RateLimitError):
            small.client().completions.create(model=MODEL, prompt="x", max_tokens=1, n=3)
        status, headers, _ = small.post("/v1/completions", {"model": MODEL, "prompt": "x", "max_tokens": 1, "n": 3})
        assert status == 429 and int(headers["Retry-After"]) >= 1
    finally:
        small.stop()


# ---------------------------------------------------------------- raw HTTP


@pytest.mark.parametrize("body, status, param", [
    (b"{not json", 400, None),
    (b"[" * 100_000 + b"]" * 100_000, 400, None),
    ({"model": MODEL, "prompt": "x", "max_tokens": "5"}, 400, "max_tokens"),
    ({"model": MODEL, "prompt": "x", "temperature": 3}, 400, "temperature"),
    ({"model": MODEL, "prompt": 5}, 400, "prompt"),
    ({"model": MODEL, "prompt": [1, -1]}, 400, "prompt"),
    ({"model": MODEL, "prompt": [[]]}, 400, "prompt"),
    ({"model": MODEL, "prompt": "x", "n": 0}, 400, "n"),
    ({"model": MODEL, "prompt": "x", "n": 2, "best_of": 1}, 400, "best_of"),
    ({"model": MODEL, "prompt": "x", "best_of": 3, "stream": True}, 400, "best_of"),
    ({"model": MODEL, "prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
    ({"model": MODEL, "prompt": "x", "logprobs": 6}, 400, "logprobs"),
    ({"model": MODEL, "prompt": "x", "logit_bias": {"99999999": 1}}, 400, "logit_bias"),
    ({"model": MODEL, "prompt": "x", "frobnicate": 1}, 400, "frobnicate"),
    ({"model": MODEL, "prompt": ["x"] * 200, "n": 2}, 400, "n"),
    ({"prompt": "x"}, 400, "model"),
])
def test_a_bad_request_gets_openais_error_object_and_no_stack_trace(server, body, status, param):
    got, _, reply = server.post("/v1/completions", body)
    assert got == status, reply
    assert set(reply["error"]) == {"message", "type", "param", "code"} and reply["error"]["param"] == param
    assert "Traceback" not in json.dumps(reply)


def raw_post_status(server, head, body):
    """The status line of a request sent over a plain socket: the server may answer (and close) before
    the whole body is sent, so a broken pipe while sending is expected, not a failure."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as connection:
        try:
            connection.sendall(head + body)
        except (BrokenPipeError, ConnectionResetError):
            pass
        reply = b""
        while b"\r\n\r\n" not in reply:
            chunk = connection.recv(65536)
            if not chunk:
                break
            reply += chunk
    return reply.split(b"\r\n", 1)[0].decode()


@pytest.mark.parametrize("chunked", [False, True])
def test_a_body_over_the_limit_is_a_413_whether_its_length_is_said_or_not(server, chunked):
    body = b"x" * (3 * 2**20)
    head = b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    if chunked:
        head += b"Transfer-Encoding: chunked\r\n\r\n"
        body = b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in [body[i : i + 65536]
                                                                         for i in range(0, len(body), 65536)])
        body += b"0\r\n\r\n"
    else:
        head += b"Content-Length: %d\r\n\r\n" % len(body)
    assert raw_post_status(server, head, body).split()[1] == "413"


def test_tokenize_and_detokenize_round_trip(server, model):
    _, _, tokens = server.post("/tokenize", {"prompt": "Hello, world"})
    assert tokens["tokens"] == model[2].encode("Hello, world") and tokens["max_model_len"] == 64
    assert server.post("/detokenize", {"tokens": tokens["tokens"]})[2] == {"prompt": "Hello, world"}


def test_models_lists_the_served_model(server):
    models = server.client().models.list()
    assert [m.id for m in models.data] == [MODEL]
    with pytest.raises(openai.NotFoundError):
        server.client().models.retrieve("gpt-4")


def cors_header(server):
    request = urllib.request.Request(server.url + "/v1/models", headers={"Origin": "http://example.test"})
    with urllib.request.urlopen(request, timeout=5) as response:
        return response.headers.get("Access-Control-Allow-Origin")


def test_there_is_no_cors_unless_asked_for(server):
    assert cors_header(server) is None
    allowing = ServerProcess(MODEL_DIR, "--cors_origin", "http://example.test")
    try:
        assert cors_header(allowing) == "http://example.test"
    finally:
        allowing.stop()


# ---------------------------------------------------------------- under load


def test_concurrent_clients_share_passes_and_each_gets_its_solo_output_and_leavers_free_their_rows(server, model):
    encoder = model[2]
    prompts = [f"Client number {i} writes" for i in range(8)]
    results, errors = {}, []

    def complete(i):
        try:
            response = server.client().completions.create(model=MODEL, prompt=prompts[i], max_tokens=20, temperature=0)
            results[i] = response.choices[0].text
        except Exception as e:  # noqa: BLE001 (reported below)
            errors.append(e)

    def leave_mid_stream(i):
        stream = server.client().completions.create(model=MODEL, prompt=prompts[i], max_tokens=60, temperature=0,
                                                    stream=True)
        for n, _ in enumerate(stream):
            if n == 3:
                stream.close()  # the client goes away: its row must leave the batch
                break

    complete(0)  # warm: the first request allocates what every later one reuses
    rss_before = psutil.Process(server.process.pid).memory_info().rss
    threads = [threading.Thread(target=complete if i % 2 == 0 else leave_mid_stream, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    for i, text in results.items():
        assert text == solo(model, encoder.encode(prompts[i]), max_tokens=20).text
    deadline = time.monotonic() + 10
    while server.metric("gpt2_rows_in_flight") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert server.metric("gpt2_rows_in_flight") == 0 and server.metric("gpt2_queue_depth") == 0
    grown = psutil.Process(server.process.pid).memory_info().rss - rss_before
    assert grown < 30 * 2**20, f"the server kept {grown / 2**20:.0f} MiB after its clients left"  # caches are ~1 MiB


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_or_ctrl_c_stops_the_server_with_a_stream_in_flight_and_exit_status_0(stop_signal):
    process = ServerProcess(MODEL_DIR)
    stream = process.client().completions.create(model=MODEL, prompt="x", max_tokens=60, stream=True)
    next(iter(stream))
    started = time.monotonic()
    process.process.send_signal(stop_signal)
    assert process.process.wait(timeout=15) == 0
    assert time.monotonic() - started < 10
    assert b"Traceback" not in process.process.stderr.read()


def test_a_failed_step_is_a_500_for_its_requests_and_the_server_goes_on(model, capfd):
    """In-process (FastAPI's TestClient), so that the engine's step can be made to fail once."""
    from fastapi.testclient import TestClient

    import server

    hparams, params, encoder = model
    engine = Engine(params, hparams["n_head"], encoder.eot_token, encoder.decode_bytes)
    real_step, failures = engine.step, []

    def step_that_fails_once():
        if not failures:
            failures.append(True)
            raise MemoryError
        return real_step()

    engine.step = step_that_fails_once
    with TestClient(server.make_app(engine, encoder, "m", hparams["n_ctx"])) as client:
        failed = client.post("/v1/completions", json={"model": "m", "prompt": "x", "max_tokens": 3})
        assert failed.status_code == 500 and failed.json()["error"]["type"] == "server_error"
        assert "Traceback" not in failed.text
        assert client.post("/v1/completions", json={"model": "m", "prompt": "x", "max_tokens": 3}).status_code == 200
    assert "a step failed (MemoryError" in capfd.readouterr().err
