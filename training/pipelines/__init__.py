"""Per-method data pipelines: ``prepare(sample, conf)`` (in the data workers) and ``collate``.

The trainer takes them from ``pipelines/<method>.py`` (see training/README.md)."""
