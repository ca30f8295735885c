"""--prompts_file in OpenAI's Batch format: a completions request per line, a response per line."""
import json

import pytest

import gpt2
import reference
from conftest import json_lines, load_fixture, run_gpt2, symlinked_models_dir
from encoder import get_encoder


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    return symlinked_models_dir(tmp_path_factory, {"124M": "tiny-b"})


@pytest.fixture(scope="module")
def encoder():
    return get_encoder("tiny-b", reference.FIXTURES_DIR)


def request(custom_id, **body):
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/completions",
            "body": {"model": "gpt-3.5-turbo-instruct", **body}}


def write_lines(path, lines):
    path.write_text("".join(line if isinstance(line, str) else json.dumps(line) + "\n" for line in lines),
                    encoding="utf-8")
    return path


GOOD = [request(f"greedy-{i}", prompt=f"Request number {i} says", max_tokens=6, temperature=0) for i in range(20)] + [
    request("seeded", prompt=["one", "two"], max_tokens=5, seed=7, n=2, logprobs=2),
    request("echo", prompt="Echo this", max_tokens=0, echo=True, logprobs=1),
]


def test_each_line_gets_its_response_in_input_order_with_its_model_copied(models_dir, encoder, tmp_path):
    lines = GOOD[:3] + [request("other-model", prompt="Hi", max_tokens=3, temperature=0)]
    lines[-1]["body"]["model"] = "davinci-002"
    result = run_gpt2("--prompts_file", write_lines(tmp_path / "batch.jsonl", lines), "--models_dir", models_dir)
    assert result.returncode == 0, result.stderr.decode()
    got = json_lines(result.stdout)
    assert [r["custom_id"] for r in got] == [line["custom_id"] for line in lines]
    assert [list(r) for r in got] == [["id", "custom_id", "response", "error"]] * 4
    hparams, params = load_fixture("tiny-b")
    for line, record in zip(lines, got):
        assert record["error"] is None and record["response"]["status_code"] == 200
        body = record["response"]["body"]
        assert body["model"] == line["body"]["model"] and body["object"] == "text_completion"
        prompt = encoder.encode(line["body"]["prompt"])
        tokens = gpt2.generate(prompt, params, hparams["n_head"], line["body"]["max_tokens"])
        assert body["choices"][0]["text"] == encoder.decode(tokens)
        assert body["usage"] == {"prompt_tokens": len(prompt), "completion_tokens": len(tokens),
                                 "total_tokens": len(prompt) + len(tokens)}


def test_a_bad_line_becomes_an_error_record_and_the_job_goes_on(models_dir, tmp_path):
    lines = [GOOD[0], "{not json\n", request("chat", prompt="x"), {"custom_id": 5, "method": "POST"},
             request("too-long", prompt="x", max_tokens=1000), request("bad-field", prompt="x", temperature=9),
             request("stream", prompt="x", stream=True), "[1, 2]\n", GOOD[1]]
    lines[2]["url"] = "/v1/chat/completions"
    result = run_gpt2("--prompts_file", write_lines(tmp_path / "batch.jsonl", lines), "--models_dir", models_dir)
    assert result.returncode == 0, result.stderr.decode()
    got = json_lines(result.stdout)
    assert len(got) == len(lines)
    assert [r["custom_id"] for r in got] == ["greedy-0", None, "chat", None, "too-long", "bad-field", "stream", None,
                                             "greedy-1"]
    assert got[1]["error"]["code"] == "invalid_json_line" and got[1]["response"] is None
    assert "/v1/completions" in got[2]["error"]["message"] and "custom_id" in got[3]["error"]["message"]
    for record, param in zip(got[4:7], ["max_tokens", "temperature", "stream"]):  # refused as the server refuses
        assert record["error"] is None and record["response"]["status_code"] == 400
        assert record["response"]["body"]["error"]["param"] == param
    assert got[0]["response"]["status_code"] == got[-1]["response"]["status_code"] == 200


def test_the_same_file_gives_the_same_bytes_and_seeded_choices_differ(models_dir, tmp_path):
    """The ids come from each line, "created" from the file: a rerun (or a resumed run) writes the same bytes."""
    path = write_lines(tmp_path / "batch.jsonl", GOOD)
    first, second = (run_gpt2("--prompts_file", path, "--models_dir", models_dir).stdout for _ in range(2))
    assert first == second != b""
    seeded = json_lines(first)[20]["response"]["body"]
    assert len(seeded["choices"]) == 4 and len({c["text"] for c in seeded["choices"]}) > 1
    assert seeded["choices"][0]["logprobs"]["top_logprobs"][0]
    echo = json_lines(first)[21]["response"]["body"]["choices"][0]
    assert echo["text"] == "Echo this" and echo["logprobs"]["token_logprobs"][0] is None


def test_resume_writes_exactly_the_uninterrupted_output(models_dir, tmp_path):
    path = write_lines(tmp_path / "batch.jsonl", GOOD)
    args = ["--prompts_file", path, "--models_dir", models_dir, "--batch_size", 2]  # chunks of 8 lines
    complete = run_gpt2(*args).stdout
    output = tmp_path / "out.jsonl"
    cut = [i for i, byte in enumerate(complete) if byte == ord("\n")][10] + 40
    output.write_bytes(complete[:cut])
    result = run_gpt2(*args, "--output", output)
    assert result.returncode == 0, result.stderr.decode()
    assert output.read_bytes() == complete


def test_output_of_another_batch_file_is_refused(models_dir, tmp_path):
    output = tmp_path / "out.jsonl"
    assert run_gpt2("--prompts_file", write_lines(tmp_path / "a.jsonl", GOOD[:2]), "--models_dir", models_dir,
                    "--output", output).returncode == 0
    other = run_gpt2("--prompts_file", write_lines(tmp_path / "b.jsonl", GOOD[2:4]), "--models_dir", models_dir,
                     "--output", output)
    assert other.returncode == 1 and b"is not this run's record" in other.stderr
