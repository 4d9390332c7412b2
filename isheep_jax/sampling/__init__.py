"""Sampling: token choice, the jitted decode loop, and the batch driver (`Generator`)."""
