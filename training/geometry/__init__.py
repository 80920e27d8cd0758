"""Geometry for training: the homography-pair sampler and ground-truth correspondences."""
from .homography import (  # noqa: F401
    DEFAULT_CONF, reprojection_matches, sample_homography, sample_pair, sample_pair_geometry,
    visibility, warp_image, warp_points,
)
