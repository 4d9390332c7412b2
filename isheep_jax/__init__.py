"""isheep_jax: the I-SHEEP self-alignment loop in JAX."""

import os

# etils.epath reaches gs:// through fsspec (gcsfs) rather than TensorFlow's gfile: one GCS
# client for all of our file access (orbax's metadata too), the one the tests run against a
# GCS emulator (TensorFlow's GCS filesystem cannot be pointed at one). EPATH_USE_TF=true
# restores etils' default.
os.environ.setdefault("EPATH_USE_TF", "false")

__version__ = "0.1.0"
