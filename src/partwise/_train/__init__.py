"""Training: the task protocol, the plan driver every loop uses, the Trainer, resume, loaders and the cache.

The top room of the core, built on :mod:`partwise._model`, :mod:`partwise._optim` and :mod:`partwise._run`.
"""
