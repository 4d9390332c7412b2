"""Editable prompt templates (`templates`) and the shipped ones (`*.txt`): synthesis and rating prompts."""
