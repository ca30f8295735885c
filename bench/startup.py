"""Print the seconds a fresh process takes to import gpt2 and utils and load a model.

    python bench/startup.py MODEL_SIZE MODELS_DIR
"""
import os
import sys
import time

start = time.perf_counter()
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import gpt2  # noqa: E402, F401 (its import time is part of start-up)
import utils  # noqa: E402

utils.load_encoder_hparams_and_params(sys.argv[1], sys.argv[2])
print(time.perf_counter() - start)
