"""The transformer, its parameters, checkpoints, tokenizer and conversions."""
