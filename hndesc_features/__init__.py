"""hndesc-features: self-supervised learned local descriptors as hloc extractors.

Kept import-light on purpose: the hloc hook imports this package at interpreter start-up.
"""
import logging

__version__ = "0.2.0"

logger = logging.getLogger("hndesc_features")
if not logger.handlers:
    _h = logging.StreamHandler()
    _h.setFormatter(logging.Formatter(
        fmt="[%(asctime)s %(name)s %(levelname)s] %(message)s", datefmt="%Y/%m/%d %H:%M:%S"))
    logger.addHandler(_h)
    logger.setLevel(logging.INFO)
    logger.propagate = False
