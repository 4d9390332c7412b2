"""Leaves every layer builds on: files (local or gs://), cache directories, hooks."""
