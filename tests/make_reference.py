"""Write tests/fixtures/reference.npz: transformers' outputs on the committed fixture models.

    python tests/make_reference.py     # needs torch==2.13.0, transformers and tensorflow

For each fixture configuration it stores, from a float64 GPT2LMHeadModel whose weights were read
with TensorFlow's own tf.train.load_variable (independent of this project's reader):
- `<name>/tokens`: a fixed sequence of n_ctx token ids;
- `<name>/columns` and `<name>/logits_columns`: the logits of every position at 1,024 fixed
  vocabulary columns (storing all 50,257 columns at every position would take megabytes);
- `<name>/logits_last`: all 50,257 logits at the last position;
- `<name>/cli_tokens`: transformers' greedy continuation of reference.CLI_PROMPT;
- `<name>/repetition_prompt` and `<name>/repetition_tokens_<R>`: transformers' greedy continuation with
  generate(..., repetition_penalty=R), for R in reference.REPETITION_PENALTIES;
- `<name>/score_nll_stride<S>`: the average negative log-likelihood of reference.SCORE_TEXT with
  sliding windows of n_ctx tokens every S tokens (S = n_ctx // 2 and 5), and `<name>/score_nll_short`
  transformers' own loss on reference.SHORT_SCORE_TEXT.
"""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import reference  # noqa: E402


def checkpoint_arrays_from_tensorflow(model_dir):
    import tensorflow as tf

    prefix = os.path.join(model_dir, "model.ckpt")
    return {name: tf.train.load_variable(prefix, name) for name, _ in tf.train.list_variables(prefix)}


def main():
    from encoder import get_encoder

    out = {}
    for name in reference.FIXTURE_CONFIGS:
        model_dir = reference.fixture_dir(name)
        hparams = reference.read_hparams(model_dir)
        model = reference.hf_model(hparams, checkpoint_arrays_from_tensorflow(model_dir))
        tokens = reference.reference_tokens(hparams["n_vocab"], hparams["n_ctx"])
        columns = reference.reference_columns(hparams["n_vocab"])
        logits = reference.hf_logits(model, tokens)  # [n_ctx, n_vocab]
        prompt = get_encoder(name, reference.FIXTURES_DIR).encode(reference.CLI_PROMPT)
        out[f"{name}/tokens"] = np.array(tokens, dtype=np.int64)
        out[f"{name}/columns"] = columns
        out[f"{name}/logits_columns"] = logits[:, columns].astype(np.float32)
        out[f"{name}/logits_last"] = logits[-1].astype(np.float32)
        out[f"{name}/cli_tokens"] = np.array(reference.hf_greedy(model, prompt, reference.CLI_NEW_TOKENS))
        encoder = get_encoder(name, reference.FIXTURES_DIR)
        score_tokens = encoder.encode(reference.SCORE_TEXT)
        for stride in (hparams["n_ctx"] // 2, 5):
            out[f"{name}/score_nll_stride{stride}"] = np.float64(
                reference.hf_window_nll(model, score_tokens, hparams["n_ctx"], stride)
            )
        out[f"{name}/score_nll_short"] = np.float64(
            reference.hf_short_text_nll(model, encoder.encode(reference.SHORT_SCORE_TEXT))
        )
        repetition_prompt = reference.reference_tokens(hparams["n_vocab"], 5, seed=17)
        out[f"{name}/repetition_prompt"] = np.array(repetition_prompt)
        for penalty in reference.REPETITION_PENALTIES:
            n_new = hparams["n_ctx"] - len(repetition_prompt)
            continuation = reference.hf_greedy(model, repetition_prompt, n_new, repetition_penalty=penalty)
            out[f"{name}/repetition_tokens_{penalty}"] = np.array(continuation)
        print(f"{name}: {len(tokens)} positions, greedy continuation {out[f'{name}/cli_tokens'].tolist()}")
    np.savez_compressed(reference.REFERENCE_FILE, **out)
    print(f"wrote {reference.REFERENCE_FILE} ({os.path.getsize(reference.REFERENCE_FILE)} bytes)")


if __name__ == "__main__":
    main()
