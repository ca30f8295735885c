"""transformers' side of the benchmark's whole-CLI figure: load a saved model and generate greedily.

    python bench/transformers_generate.py HF_DIR PROMPT N_NEW THREADS

It does what a transformers user would: import torch and transformers, load the model and its
tokenizer with from_pretrained, generate N_NEW tokens with the KV cache, print the text.
"""
import sys

import torch
from transformers import AutoTokenizer, GPT2LMHeadModel

hf_dir, prompt, n_new, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(threads)
tokenizer = AutoTokenizer.from_pretrained(hf_dir)
model = GPT2LMHeadModel.from_pretrained(hf_dir, dtype=torch.float32).eval()
inputs = tokenizer(prompt, return_tensors="pt")
with torch.no_grad():
    out = model.generate(**inputs, do_sample=False, max_new_tokens=n_new, min_new_tokens=n_new,
                         use_cache=True, pad_token_id=tokenizer.eos_token_id)
print(tokenizer.decode(out[0, inputs["input_ids"].shape[1]:]))
