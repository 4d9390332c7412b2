"""Checkpoint conversion: Hugging Face safetensors and llama.cpp GGUF."""
