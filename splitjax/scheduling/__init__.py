"""Scheduling policy: plain Python over plain records. Never imports jax.

The real runtime and the cluster simulator drive these same objects.
"""
