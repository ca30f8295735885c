"""Checks on OpenAI's real GPT-2 weights, where they are on disk.

They are looked for in $GPT2_MODELS_DIR/<size>, else in models/<size> at the top of the repository
(where `python gpt2.py ...` downloads them). Without them these tests skip and say why; the
expected values are published facts, never values made up here.
"""
import os
import subprocess
import sys

import pytest

import download
import utils
from conftest import REPO_DIR

MODELS_DIR = os.environ.get("GPT2_MODELS_DIR") or os.path.join(REPO_DIR, "models")
REAL_124M = {"n_vocab": 50257, "n_ctx": 1024, "n_embd": 768, "n_head": 12, "n_layer": 12}
PROMPT = "Alan Turing theorized that computers would one day become"
# picoGPT's published greedy output for this prompt, 40 tokens, 124M
GOLDEN = (
    " the most powerful machines on the planet.\n\nThe computer is a machine that can perform complex "
    "calculations, and it can perform these calculations in a way that is very similar to the human brain."
)


@pytest.fixture(scope="module")
def real_124m():
    model_dir = os.path.join(MODELS_DIR, "124M")
    missing = [name for name in download.MODEL_FILES if not os.path.isfile(os.path.join(model_dir, name))]
    if missing:
        pytest.skip(f"OpenAI's 124M weights are not in {model_dir} (no {missing[0]}): run "
                    "`python gpt2.py hello` with network access, or set GPT2_MODELS_DIR")
    if utils.load_hparams(model_dir) != REAL_124M:
        pytest.skip(f"{model_dir} holds a model with other hparams than OpenAI's 124M")
    return model_dir


def test_greedy_continuation_of_the_alan_turing_prompt_is_picogpts_published_output(real_124m):
    result = subprocess.run(
        [sys.executable, os.path.join(REPO_DIR, "gpt2.py"), PROMPT, "--n_tokens_to_generate", "40",
         "--models_dir", os.path.dirname(real_124m)],
        capture_output=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode("utf-8") == GOLDEN


def test_pico_gives_the_same_greedy_tokens_on_the_real_weights(real_124m):
    import gpt2
    import gpt2_pico

    encoder, hparams, params = utils.load_encoder_hparams_and_params("124M", os.path.dirname(real_124m))
    prompt = encoder.encode(PROMPT)
    pico = gpt2_pico.generate(prompt, params, hparams["n_head"], 8)
    assert pico == gpt2.generate(prompt, params, hparams["n_head"], 8)


def test_every_real_tensor_equals_tensorflow_bit_for_bit(real_124m):
    tf = pytest.importorskip("tensorflow", reason="TensorFlow is the reference reader")
    prefix = os.path.join(real_124m, "model.ckpt")
    ours = utils.map_checkpoint_tensors(real_124m, utils.load_hparams(real_124m))
    for name, array in ours.items():
        assert array.tobytes() == tf.train.load_variable(prefix, name).tobytes(), name
