"""Supervised fine-tuning: vocabulary, SeqIO data, optimizer, train step, trainer, metrics."""
