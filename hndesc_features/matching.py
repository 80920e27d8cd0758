"""Mutual nearest-neighbour matching of L2-normalised descriptors (hloc's `nearest_neighbor`)."""
from __future__ import annotations

import torch


def find_nn(sim: torch.Tensor, ratio_thresh=None, distance_thresh=None):
    sim_nn, ind_nn = sim.topk(2 if ratio_thresh else 1, dim=-1, largest=True)
    dist_nn = 2 * (1 - sim_nn)
    mask = torch.ones(ind_nn.shape[:-1], dtype=torch.bool, device=sim.device)
    if ratio_thresh:
        mask = mask & (dist_nn[..., 0] <= (ratio_thresh ** 2) * dist_nn[..., 1])
    if distance_thresh:
        mask = mask & (dist_nn[..., 0] <= distance_thresh ** 2)
    matches = torch.where(mask, ind_nn[..., 0], ind_nn.new_tensor(-1))
    scores = torch.where(mask, (sim_nn[..., 0] + 1) / 2, sim_nn.new_tensor(0))
    return matches, scores


def mutual_check(m0: torch.Tensor, m1: torch.Tensor) -> torch.Tensor:
    inds0 = torch.arange(m0.shape[-1], device=m0.device)
    loop = torch.gather(m1, -1, torch.where(m0 > -1, m0, m0.new_tensor(0)))
    ok = (m0 > -1) & (inds0 == loop)
    return torch.where(ok, m0, m0.new_tensor(-1))


def nearest_neighbor(desc0: torch.Tensor, desc1: torch.Tensor, ratio_threshold=None,
                     distance_threshold=None, do_mutual_check=True):
    """desc0 B×D×N, desc1 B×D×M → matches0 B×N (index or -1), matching_scores0 B×N."""
    if desc0.shape[-1] == 0 or desc1.shape[-1] == 0:
        m = torch.full(desc0.shape[:1] + desc0.shape[2:], -1, device=desc0.device)
        return m, torch.zeros(m.shape, device=desc0.device)
    if desc0.shape[-1] == 1 or desc1.shape[-1] == 1:
        ratio_threshold = None
    sim = torch.einsum("bdn,bdm->bnm", desc0, desc1)
    m0, s0 = find_nn(sim, ratio_threshold, distance_threshold)
    if do_mutual_check:
        m1, _ = find_nn(sim.transpose(1, 2), ratio_threshold, distance_threshold)
        m0 = mutual_check(m0, m1)
    return m0, s0
