"""hndesc_features.training: the shared trainer, datasets and losses (``python -m hndesc_features.training.train``).

This folder is the package ``hndesc_features.training`` (setup.py maps it there, in a wheel and in
an editable install alike). It has that one name: imported as a top-level ``training`` (e.g. from a
checkout's root) it would be a second copy of every module, with its own caches and classes.
"""
if __name__ != "hndesc_features.training":
    raise ImportError(
        f"this folder is the package 'hndesc_features.training', imported here as '{__name__}': use "
        "`import hndesc_features.training...` / `python -m hndesc_features.training.train` "
        "(install the project first: pip install -e .)")
