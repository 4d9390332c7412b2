"""Machinery specific to one backend."""
