"""Optimizers with one group per part, learning-rate schedules, and phased plans with their fingerprints.

Built on :mod:`partwise._model`; knows nothing of checkpoints or training loops.
"""
