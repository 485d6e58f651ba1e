"""Weights and runs on disk: checkpoints, the run folder, checkpoint averaging and model surgery.

Built on :mod:`partwise._model`; every write is atomic (a temp file renamed into place).
"""
