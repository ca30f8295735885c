"""Independent references that the tests and the benchmark share (never imported by the tool itself):

- openai_checkpoint: writes model directories in OpenAI's exact release format with TensorFlow's
  own Saver (random weights, small or at the real shapes);
- transformers_model: HuggingFace transformers' GPT2LMHeadModel holding a checkpoint's weights,
  and its logits, greedy generation and windowed loss.
"""
