"""Losses of the training methods: one module per method (see training/README.md)."""
