"""The I-SHEEP method: seed pool, synthesis, filters, self-assessment, run directory, the loop.

Data flow of one iteration (`runner.Loop`): seed pool -> synthesize -> respond -> rule
filter -> assess -> score filter -> SeqIO task -> train -> checkpoint.
"""

from isheep_jax.loop.runner import Loop, LoopConfig, run, status

__all__ = ["Loop", "LoopConfig", "run", "status"]
