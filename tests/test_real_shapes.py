"""OpenAI's real 124M shapes with random weights (marker `slow`: python -m pytest -m slow).

The checkpoint is written once by TensorFlow (references/openai_checkpoint.py --config 124M) into
$GPT2_BENCH_CACHE/124M (default: bench_cache/124M at the top of the repository), shared with
bench/bench.py, so that `--models_dir bench_cache` runs it with the CLI. Writing it takes about a
minute and 500 MB of disk.
"""
import os
import subprocess
import sys

import numpy as np
import pytest

import gpt2
import gpt2_pico
import reference
import utils
from conftest import REPO_DIR

pytestmark = pytest.mark.slow
CACHE = os.environ.get("GPT2_BENCH_CACHE") or os.path.join(REPO_DIR, "bench_cache")


@pytest.fixture(scope="module")
def model_dir():
    pytest.importorskip("tensorflow", reason="writing the checkpoint needs TensorFlow")
    path = os.path.join(CACHE, "124M")
    if not os.path.isfile(os.path.join(path, "vocab.bpe")):  # written last
        script = os.path.join(REPO_DIR, "references", "openai_checkpoint.py")
        subprocess.run([sys.executable, script, "--config", "124M", "--out", path], check=True)
    return path


@pytest.fixture(scope="module")
def model(model_dir):
    hparams = utils.load_hparams(model_dir)
    return hparams, utils.load_params(model_dir, hparams)


def test_real_shaped_checkpoint_equals_tensorflow_bit_for_bit(model_dir):
    import tensorflow as tf

    prefix = os.path.join(model_dir, "model.ckpt")
    ours = utils.map_checkpoint_tensors(model_dir, utils.load_hparams(model_dir))
    assert sorted(ours) == sorted(name for name, _ in tf.train.list_variables(prefix))
    for name, array in ours.items():
        assert array.tobytes() == tf.train.load_variable(prefix, name).tobytes(), name


def test_real_shaped_logits_match_transformers(model_dir, model):
    """1e-4 absolute: dot products now run over 768 and 3,072 terms, still ~1e-5 of float32 error."""
    pytest.importorskip("transformers", reason="needs torch==2.13.0 and transformers")
    hparams, params = model
    hf = reference.hf_model(hparams, utils.map_checkpoint_tensors(model_dir, hparams))
    tokens = reference.reference_tokens(hparams["n_vocab"], 40, seed=9)
    expected = reference.hf_logits(hf, tokens)
    ours = gpt2.gpt2(tokens, **params, n_head=hparams["n_head"])
    assert np.abs(ours - expected).max() <= 1e-4, np.abs(ours - expected).max()


def test_real_shaped_cache_and_pico_agree_with_the_full_forward_pass(model):
    hparams, params = model
    prompt = reference.reference_tokens(hparams["n_vocab"], 10, seed=4)
    tokens = list(prompt)
    for token, logits in gpt2.generate_steps(prompt, params, hparams["n_head"], 12):
        assert np.abs(logits - gpt2.gpt2(tokens, **params, n_head=hparams["n_head"])[-1]).max() <= 1e-4
        tokens.append(token)
    assert gpt2_pico.generate(prompt, params, hparams["n_head"], 12) == tokens[len(prompt):]


def test_cli_generates_40_tokens_with_real_shapes(model_dir):
    command = [sys.executable, os.path.join(REPO_DIR, "gpt2.py"), reference.CLI_PROMPT,
               "--models_dir", os.path.dirname(model_dir), "--ignore_eos"]
    result = subprocess.run(command, capture_output=True, timeout=300)
    assert result.returncode == 0, result.stderr.decode()
    assert len(result.stdout) > 0


def test_a_full_context_report_stays_under_20_mb(model, tmp_path):
    """1,024 tokens at 124M shapes: attention for 144 heads is bounded by the rows kept (162)."""
    import explain
    import explain_page
    from encoder import get_encoder

    hparams, params = model
    encoder = get_encoder("124M", CACHE)
    tokens = reference.reference_tokens(hparams["n_vocab"], 1024, seed=6)
    data = explain.explain_data(encoder, hparams, params, tokens[:1000], tokens[1000:], [[(1, 0.5)]] * 24, "card")
    assert data["attention_rows"].shape == (12, 12, 162, 1024)
    path = tmp_path / "report.html"
    explain_page.write_report(str(path), data, {t: encoder.decode([t]) for t in set(tokens)}, "full context")
    assert path.stat().st_size < 20e6

