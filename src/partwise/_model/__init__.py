"""A model as named parts: selecting modules, freezing them, guarding what is frozen, untying shared tensors.

The lowest room of the core; it imports only :mod:`partwise._errors`.
"""
