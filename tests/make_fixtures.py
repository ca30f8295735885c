"""Write the committed test fixtures tests/fixtures/tiny-a and tiny-b (needs TensorFlow).

    python tests/make_fixtures.py

They are OpenAI-format model directories written by references/openai_checkpoint.py; after
rewriting them, run tests/make_reference.py so the stored transformers outputs match.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from references.openai_checkpoint import CONFIGS, SEEDS, write_model_dir  # noqa: E402

FIXTURES_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")

if __name__ == "__main__":
    for name in ("tiny-a", "tiny-b"):
        write_model_dir(os.path.join(FIXTURES_DIR, name), CONFIGS[name], SEEDS[name])
        print(f"wrote {name} to {os.path.join(FIXTURES_DIR, name)}")
