"""isheep_jax: the I-SHEEP self-alignment loop in JAX."""

__version__ = "0.1.0"
