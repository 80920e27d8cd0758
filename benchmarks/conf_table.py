"""The README's conf table: every feature conf with its keypoints, dimension and weights, and the
quality and CPU cost measured by one run of each benchmark.

    python -m benchmarks.conf_table --speed benchmarks/results/speed_all.json \
        --webcam benchmarks/results/webcam_all.json --hpatches benchmarks/results/dev_hpatches_all.json \
        --strecha benchmarks/results/strecha_all.json [--readme README.md]

Columns: real illumination change (webcam dev scene chamonix, MMA@3, GT = identity), viewpoint
(dev-HPatches `v_*`, MMA@3), real two-view pairs (Strecha, share of matches within 3 px of the GT
epipolar line) and CPU ms per 1024-px image on one thread (and the ratio to rootsift, same run).
A conf missing from a file gets "–". `--readme` rewrites the block between
`<!-- conftable:begin -->` and `<!-- conftable:end -->`.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Optional

from .common import BenchmarkError, run_cli

KEYPOINTS = {"hf_sift": "DoG", "hf_hndesc": "DoG", "hf_hndesc_sp": "SuperPoint", "hf_surf": "Fast-Hessian",
             "hf_orb": "ORB", "hf_kcc": "ORB", "hf_wlrn": "ORB", "hf_netvlad": "– (global)"}
#: table order: the learned confs a user would pick first, then the references
ORDER = ["hndesc", "residual_sift", "residual_rootsift_upright", "residual_surf", "kcc_orb", "hndesc_patch",
         "hndesc_small", "hndesc_caps", "hndesc_r2d2", "hndesc_caps_sp", "hndesc_r2d2_sp", "rootsift",
         "rootsift_upright", "surf", "orb", "hf_netvlad"]
FIXED_DIM = {"hf_sift": 128, "hf_hndesc": 128, "hf_hndesc_sp": 128, "hf_surf": 64, "hf_orb": 256, "hf_kcc": 128,
             "hf_wlrn": 128, "hf_netvlad": 4096}


def describe_conf(name: str, conf: dict) -> dict:
    """keypoints / dim / weights of a feature conf, read from the conf and its weights file."""
    from hndesc_features import weights as registry

    m = conf["model"]
    kind = m["name"]
    info = {"keypoints": KEYPOINTS.get(kind, "?"), "dim": FIXED_DIM.get(kind), "weights": "–"}
    if kind == "hf_sift":
        info["keypoints"] = "DoG" + (", upright" if m.get("upright") else "")
    if kind == "hf_residual":
        info["keypoints"] = "Fast-Hessian" if "surf" in m["descriptor"] else "DoG"
        if "upright" in m["descriptor"]:
            info["keypoints"] += ", upright"
    default = {"hf_residual": f"residual_{m.get('descriptor')}", "hf_hndesc": f"hndesc_{m.get('backbone')}",
               "hf_hndesc_sp": f"hndesc_{m.get('backbone')}",
               "hf_kcc": "kcc_orb", "hf_wlrn": "kcc_orb"}.get(kind)
    if default is not None:
        wname = Path(str(m.get("weights") or default)).name.removesuffix(".pt")
        wname = registry.canonical(wname)
        entry = registry.REGISTRY.get(wname)
        shipped = entry is not None and entry.shipped
        if kind == "hf_hndesc_sp":  # the detector's weights too
            det = Path(str(m.get("detector_weights") or "superpoint")).name.removesuffix(".pt")
            wname += "` + `" + registry.canonical(det)
        info["weights"] = f"`{wname}`" + ("" if shipped else " (user-installed)")
        if kind == "hf_residual":
            try:
                net, _ = registry.load_model(m.get("weights"), "residual", default)
                info["dim"] = int(net.dim)
            except FileNotFoundError:
                pass
    elif kind == "hf_netvlad":
        info["weights"] = "hloc's `VGG16-NetVLAD-Pitts30K.mat` (user)"
    if m.get("max_keypoints") and kind != "hf_netvlad":
        info["keypoints"] += f", top {m['max_keypoints']}"
    return info


def _load(path: Optional[Path]) -> dict:
    if path is None:
        return {}
    if not Path(path).is_file():
        raise BenchmarkError(f"{path} does not exist")
    return json.loads(Path(path).read_text())


def _webcam(d: dict) -> dict:
    out = {}
    for name, r in d.get("results", {}).items():
        th = d.get("meta", {}).get("thresholds", [1, 2, 3, 4, 5, 6, 7, 8, 9, 10])
        out[name] = r["summary"]["dev"]["mma"][th.index(3)]
    return out


def _hpatches_v(d: dict) -> dict:
    out = {}
    for name, r in d.items():
        th = (r.get("mma_details") or {}).get("thresholds", [])
        v = (r.get("mma") or {}).get("v")
        if v and 3 in th:
            out[name] = v[th.index(3)]
    return out


def _strecha(d: dict) -> dict:
    return {name: r["summary"]["epi_mma@3"] for name, r in d.items() if "summary" in r}


def _speed(d: dict) -> dict:
    out = {}
    for r in d.get("results", []):
        if r.get("device") == "cpu" and r.get("size") == 1024 and "cpu_ms_per_image" in r:
            out[r["conf"]] = (r["cpu_ms_per_image"], r.get("cpu_time_vs_ref"))
    return out


def table(speed: dict, webcam: dict, hpatches: dict, strecha: dict) -> str:
    from hndesc_features.confs import ALIASES, feature_confs

    confs = {n: c for n, c in feature_confs().items() if n not in ALIASES["features"]}
    # results stored under an alias count for its conf (wlrn_orb → kcc_orb)
    sp, wc, hp, st = ({ALIASES["features"].get(k, k): v for k, v in t.items()} for t in
                      (_speed(speed), _webcam(webcam), _hpatches_v(hpatches), _strecha(strecha)))
    confs = {n: confs[n] for n in [*[o for o in ORDER if o in confs], *sorted(set(confs) - set(ORDER))]}

    def val(table_, name, fmt="{:.3f}"):
        return fmt.format(table_[name]) if name in table_ else "–"

    rows = ["| conf | keypoints | dim | weights | illumination: webcam MMA@3 | viewpoint: dev-HPatches v MMA@3 "
            "| Strecha epi@3 | CPU ms / 1024-px image (× rootsift) |",
            "|---|---|---|---|---|---|---|---|"]
    for name, conf in confs.items():
        info = describe_conf(name, conf)
        ms = f"{sp[name][0]:.0f} ({sp[name][1]:.2f}×)" if name in sp and sp[name][1] else val(sp, name)
        rows.append(f"| `{name}` | {info['keypoints']} | {info['dim'] or '?'} | {info['weights']} | "
                    f"{val(wc, name)} | {val(hp, name)} | {val(st, name)} | {ms} |")
    return "\n".join(rows) + "\n"


def rewrite_readme(readme: Path, block: str) -> None:
    text = readme.read_text()
    begin, end = "<!-- conftable:begin -->", "<!-- conftable:end -->"
    if begin not in text or end not in text:
        raise BenchmarkError(f"{readme} has no {begin} … {end} block")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    readme.write_text(f"{head}{begin}\n{block}{end}{tail}")


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.conf_table", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--speed", type=Path, help="benchmarks.speed JSON (1024 px, CPU, one run)")
    p.add_argument("--webcam", type=Path, help="benchmarks.webcam JSON (dev scene)")
    p.add_argument("--hpatches", type=Path, nargs="+", help="benchmarks.hpatches JSON(s) (dev-HPatches; several "
                   "files of one campaign are merged, e.g. confs split over two processes)")
    p.add_argument("--strecha", type=Path, help="benchmarks.epipolar JSON (Strecha pairs)")
    p.add_argument("--readme", type=Path, help="rewrite the conftable block of this README")
    p.add_argument("--output", type=Path, help="also write the table to this markdown file")
    a = p.parse_args(argv)
    hp = {}
    for f in a.hpatches or []:
        hp.update(_load(f))
    block = table(_load(a.speed), _load(a.webcam), hp, _load(a.strecha))
    if a.output:
        a.output.write_text(block)
    if a.readme:
        rewrite_readme(a.readme, block)
    print(block)
    return block


if __name__ == "__main__":
    run_cli(main)
