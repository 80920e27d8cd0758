"""Papers' tables in markdown from our results JSON files and the evaluation server's numbers.

    python -m benchmarks.report --hpatches hp.json --localization loc_day.json loc_night.json \
        --aachen_server aachen.txt --inloc_server inloc.txt --tokyo tokyo.json \
        [--retrieval roxf.json rpar.json] [--paper_figures figures.yaml] --output RESULTS.md [--readme README.md]

Tables: HNDesc's Aachen v1.1 day/night table and sparse-matching (HPatches MMA) table; the
residual-descriptor paper's Table 1 (HPatches homography accuracy Cor-1/3/5 and matching score
at 240×320/300 kp and 480×640/1000 kp), Table 2 (camera localization: Aachen v1.1 and InLoc from
the server) and Table 3 (Structure-from-Motion statistics of the maps we triangulate); plus our
offline GT-pose localization and Tokyo 24/7 tables, and HNDesc's image-retrieval table
(ROxford5k / RParis6k Medium and Hard mAP, from benchmarks.image_retrieval).
Server numbers (Aachen, InLoc are evaluated on https://www.visuallocalization.net): a text file
(or the same text pasted as the argument) with one line per method, `method: <text the server shows>`, e.g.
`rootsift: day 88.6 / 95.8 / 99.0  night 72.3 / 90.6 / 98.4` or `rootsift: DUC1 40.4 / 58.1 /
69.7 DUC2 42.7 / 61.8 / 71.0` (a JSON {method: text} works too).
Figures copied from papers (--paper_figures YAML, see benchmarks/paper_figures.yaml) are printed
in their own tables, labelled with their source, never mixed with our measurements.
--readme rewrites the text between `<!-- results:begin -->` and `<!-- results:end -->`.
"""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Optional, Sequence

from .common import BenchmarkError, load_json, run_cli

BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"
AACHEN_COLS = ("0.25m, 2°", "0.5m, 5°", "5m, 10°")
INLOC_COLS = ("0.25m, 10°", "0.5m, 10°", "1m, 10°")
_NUM = r"(\d+(?:\.\d+)?)"
_SEP = r"\s*(?:/|,|\s)\s*"


def parse_server_numbers(text: str, keys: Sequence[str]) -> dict[str, list[float]]:
    """First three numbers after each key (case-insensitive), e.g. 'night: 72.3 / 90.6 / 98.4'."""
    out = {}
    for key in keys:
        m = re.search(re.escape(key) + r"[^0-9]{0,20}?" + _NUM + _SEP + _NUM + _SEP + _NUM, text, re.IGNORECASE)
        if m:
            out[key.lower()] = [float(v) for v in m.groups()]
    return out


def read_server_file(path, keys: Sequence[str]) -> dict[str, dict[str, list[float]]]:
    """Server numbers from a file, or from pasted text (`method: ...` lines) given instead of a path."""
    if Path(str(path)).is_file():
        path = Path(path)
        text = path.read_text()
    elif ":" in str(path) and any(k in str(path).lower() for k in keys):
        text, path = str(path), "the pasted text"
    else:
        raise BenchmarkError(f"{path} does not exist (give a file or the pasted `method: numbers` text).")
    try:
        entries = json.loads(text)
        if not isinstance(entries, dict):
            raise ValueError
        entries = {str(k): str(v) for k, v in entries.items()}
    except ValueError:
        entries = {}
        for line in text.splitlines():
            if ":" in line and not line.lstrip().startswith("#"):
                method, rest = line.split(":", 1)
                entries[method.strip()] = rest
    out = {}
    for method, t in entries.items():
        nums = parse_server_numbers(t, keys)
        if len(nums) != len(keys):
            raise BenchmarkError(f"{path}: cannot find {', '.join(keys)} numbers for '{method}' in: {t.strip()}")
        out[method] = nums
    if not out:
        raise BenchmarkError(f"{path} holds no `method: numbers` line.")
    return out


def _f(v, nd=1, scale=1.0):
    return "–" if v is None else f"{scale * v:.{nd}f}"


def _table(header: Sequence[str], rows: list[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + \
        ["| " + " | ".join(str(c) for c in r) + " |" for r in rows] + [""]


def _label(method: str, dataset: Optional[str]) -> str:
    return method if not dataset else f"{method} ({Path(dataset).name})"


# ----------------------------------------------------------------------------------------------
def hndesc_aachen(server: dict) -> list[str]:
    rows = [[m, *(_f(v) for v in n["day"]), *(_f(v) for v in n["night"])] for m, n in server.items()]
    return (["### HNDesc — Aachen Day-Night v1.1 (ours; evaluation-server numbers, %)", ""]
            + _table(["Method", *(f"Day {c}" for c in AACHEN_COLS), *(f"Night {c}" for c in AACHEN_COLS)], rows))


def hndesc_sparse_matching(hp: dict) -> list[str]:
    rows = []
    for m, r in hp.items():
        if "mma" not in r:
            continue
        a, d = r["mma"]["all"], r["mma_details"]
        i3 = r["mma"]["i"][2] if r["mma"]["i"] else None
        v3 = r["mma"]["v"][2] if r["mma"]["v"] else None
        rows.append([_label(m, r.get("dataset")), _f(a[0], 3), _f(a[2], 3), _f(a[4], 3), _f(a[9], 3),
                     _f(i3, 3), _f(v3, 3), _f(d["mean_num_features"], 0), _f(d["mean_num_matches"]["all"], 0)])
    if not rows:
        return []
    return (["### HNDesc — sparse matching on HPatches (ours; MMA, mutual NN, full resolution)", ""]
            + _table(["Method", "MMA@1", "MMA@3", "MMA@5", "MMA@10", "Illum. @3", "View. @3", "#Feat.",
                      "#Matches"], rows))


def residual_table1(hp: dict) -> list[str]:
    rows = []
    for m, r in hp.items():
        h = r.get("homography")
        if not h:
            continue
        cells = []
        for key in ("240x320", "480x640"):
            a = (h.get(key) or {}).get("all") or {}
            cells += [_f(a.get("cor1"), 3), _f(a.get("cor3"), 3), _f(a.get("cor5"), 3), _f(a.get("matching_score"), 3)]
        rows.append([_label(m, r.get("dataset")), *cells])
    if not rows:
        return []
    return (["### Residual descriptors — Table 1: HPatches homography estimation (ours)", "",
             "Cor-ε: share of image pairs whose RANSAC homography has mean corner error ≤ ε px; "
             "M.S.: matching score. 240×320 keeps 300 keypoints, 480×640 keeps 1000.", ""]
            + _table(["Method", "240×320 Cor-1", "Cor-3", "Cor-5", "M.S.", "480×640 Cor-1", "Cor-3", "Cor-5", "M.S."],
                     rows))


def residual_table2(aachen: Optional[dict], inloc: Optional[dict]) -> list[str]:
    methods = list(dict.fromkeys(list(aachen or {}) + list(inloc or {})))
    if not methods:
        return []
    header, rows = ["Method"], []
    if aachen:
        header += [f"Aachen day {c}" for c in AACHEN_COLS] + [f"Aachen night {c}" for c in AACHEN_COLS]
    if inloc:
        header += [f"DUC1 {c}" for c in INLOC_COLS] + [f"DUC2 {c}" for c in INLOC_COLS]
    for m in methods:
        row = [m]
        if aachen:
            n = aachen.get(m)
            row += [_f(v) for v in n["day"] + n["night"]] if n else ["–"] * 6
        if inloc:
            n = inloc.get(m)
            row += [_f(v) for v in n["duc1"] + n["duc2"]] if n else ["–"] * 6
        rows.append(row)
    return ["### Residual descriptors — Table 2: camera localization (ours; evaluation-server numbers, %)", ""] \
        + _table(header, rows)


def residual_table3(locs: list[dict]) -> list[str]:
    rows = []
    for r in locs:
        s = r.get("sfm")
        if not s or r.get("night"):
            continue
        rows.append([r["conf"], Path(r["scene"]).name, s["num_reg_images"], s["num_points3D"],
                     _f(s["mean_track_length"], 2), _f(s["mean_observations_per_image"], 0),
                     _f(s["mean_reprojection_error"], 3)])
    if not rows:
        return []
    return (["### Residual descriptors — Table 3: Structure-from-Motion (ours; maps triangulated from GT poses)", ""]
            + _table(["Method", "Scene", "Reg. images", "#Points", "Track length", "Obs./image", "Reproj. err. (px)"],
                     rows))


def offline_localization(locs: list[dict]) -> list[str]:
    by = {}
    for r in locs:
        by.setdefault((r["conf"], r.get("matcher", ""), Path(r["scene"]).name), {})["night" if r.get("night") else "day"] = r
    rows = []
    for (conf, matcher, scene), d in by.items():
        day, night = d.get("day"), d.get("night")
        rows.append([conf, matcher, scene,
                     *([_f(v) for v in day["recall"]] if day else ["–"] * 3),
                     *([_f(v) for v in night["recall"]] if night else ["–"] * 3),
                     f"{_f(day['median_error_m'], 3)} m / {_f(day['median_error_deg'], 2)}°" if day else "–",
                     f"{_f(night['median_error_m'], 3)} m / {_f(night['median_error_deg'], 2)}°" if night else "–"])
    if not rows:
        return []
    return (["### Offline localization with GT poses (ours; Strecha scenes, Aachen thresholds, %) — a dev proxy, "
             "not Aachen", ""]
            + _table(["Conf", "Matcher", "Scene", *(f"Day {c}" for c in AACHEN_COLS),
                      *(f"Night {c}" for c in AACHEN_COLS), "Median day", "Median night"], rows))


def tokyo_table(tokyo: list[dict]) -> list[str]:
    rows = [[r["conf"], r.get("matcher", ""), *(_f(v) for v in r["recall"]), *(_f(v) for v in r["recall_shortlist"]),
             r["num_queries"]] for r in tokyo]
    if not rows:
        return []
    return (["### Tokyo 24/7 (ours; recall@N within 25 m, %)", ""]
            + _table(["Conf", "Matcher", "R@1", "R@5", "R@10", "Shortlist R@1", "R@5", "R@10", "#Queries"], rows))


RETRIEVAL_COLS = (("roxford5k", "medium", "ROxf Medium"), ("roxford5k", "hard", "ROxf Hard"),
                  ("rparis6k", "medium", "RPar Medium"), ("rparis6k", "hard", "RPar Hard"))


def retrieval_table(results: list[dict]) -> list[str]:
    """HNDesc's image-retrieval table: one row per method (local conf re-ranking a global shortlist,
    or the global ranking alone), mAP (%) of ROxford5k / RParis6k Medium and Hard."""
    rows: dict[str, dict] = {}
    for r in results:
        if "map" not in r or r.get("dataset") not in {d for d, _, _ in RETRIEVAL_COLS}:
            raise BenchmarkError("A --retrieval file is not a benchmarks.image_retrieval result "
                                 f"(dataset {r.get('dataset')!r}, keys {sorted(r)[:6]}).")
        glob = Path(str(r.get("global") or "?")).stem
        if r.get("reranked", True):
            method = f"{r.get('method') or r.get('conf')}"
            if r.get("matcher") not in (None, "NN-mutual"):
                method += f" / {r['matcher']}"
            method += f" (top {r.get('num_rerank', 100)} of {glob})"
        else:
            method = f"{glob} (global only)"
        rows.setdefault(method, {})[r["dataset"]] = r["map"]
    if not rows:
        return []
    body = [[m, *(_f(v.get(d, {}).get(s)) for d, s, _ in RETRIEVAL_COLS)] for m, v in rows.items()]
    return (["### HNDesc — image retrieval, revisited Oxford and Paris (ours; mAP %, shortlist re-ranked by "
             "RANSAC inliers)", ""]
            + _table(["Method", *(c for _, _, c in RETRIEVAL_COLS)], body))


def paper_tables(figs: dict) -> list[str]:
    """Published numbers, each table titled with its source."""
    out = []
    for key, spec in figs.items():
        if not isinstance(spec, dict) or "rows" not in spec:
            continue
        cols = spec.get("columns")
        rows = spec["rows"] or {}
        if not cols or not rows:
            continue
        out += [f"### Published: {spec.get('title', key)} — copied from {spec.get('source', '?')} (not measured here)", ""]
        out += _table(["Method", *cols], [[m, *(("–" if v is None else v) for v in vals)] for m, vals in rows.items()])
    return out


def build_report(hpatches=(), localization=(), tokyo=(), aachen_server=None, inloc_server=None,
                 paper_figures=None, retrieval=()) -> str:
    hp = {}
    for p in hpatches:
        for m, r in load_json(p).items():
            hp[m if m not in hp else f"{m} [{Path(p).stem}]"] = r
    locs = []
    for p in localization:
        r = load_json(p)
        locs += [r] if "recall" in r else list(r.values())
    toks = [load_json(p) for p in tokyo]
    aachen = read_server_file(aachen_server, ("day", "night")) if aachen_server else None
    inloc = read_server_file(inloc_server, ("duc1", "duc2")) if inloc_server else None
    lines = ["## Results", "",
             "Measured by `benchmarks/` in this repository (see docs); numbers copied from papers are in the "
             "separate *Published* tables at the end.", ""]
    if aachen:
        lines += hndesc_aachen(aachen)
    lines += hndesc_sparse_matching(hp)
    lines += residual_table1(hp)
    lines += residual_table2(aachen, inloc)
    lines += residual_table3(locs)
    lines += offline_localization(locs)
    lines += tokyo_table(toks)
    lines += retrieval_table([load_json(p) for p in retrieval])
    if paper_figures:
        import yaml

        pf = Path(paper_figures)
        if not pf.exists():
            raise BenchmarkError(f"{pf} does not exist.")
        published = paper_tables(yaml.safe_load(pf.read_text()) or {})
        if published:
            lines += ["## Published figures (from the papers; not reproduced by us)", ""] + published
    return "\n".join(lines).rstrip() + "\n"


def update_readme(readme: Path, body: str) -> None:
    readme = Path(readme)
    text = readme.read_text() if readme.exists() else ""
    if BEGIN not in text or END not in text or text.index(BEGIN) > text.index(END):
        raise BenchmarkError(f"{readme} has no `{BEGIN}` … `{END}` block to replace; add the two markers "
                             "where the results section should go.")
    pre, rest = text.split(BEGIN, 1)
    _, post = rest.split(END, 1)
    readme.write_text(pre + BEGIN + "\n" + body.rstrip() + "\n" + END + post)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--hpatches", type=Path, nargs="*", default=[], help="benchmarks.hpatches JSON(s)")
    parser.add_argument("--localization", type=Path, nargs="*", default=[], help="benchmarks.localization_gt JSON(s)")
    parser.add_argument("--tokyo", type=Path, nargs="*", default=[], help="benchmarks.tokyo247 JSON(s)")
    parser.add_argument("--retrieval", type=Path, nargs="*", default=[],
                        help="benchmarks.image_retrieval JSON(s) (ROxford5k / RParis6k)")
    parser.add_argument("--aachen_server", help="file or pasted text: `method: day a/b/c night d/e/f` lines")
    parser.add_argument("--inloc_server", help="file or pasted text: `method: DUC1 a/b/c DUC2 d/e/f` lines")
    parser.add_argument("--paper_figures", type=Path, help="YAML of published numbers (own tables)")
    parser.add_argument("--output", type=Path, help="markdown file to write (default: stdout)")
    parser.add_argument("--readme", type=Path, help="replace the results block of this README")
    args = parser.parse_args(argv)
    body = build_report(args.hpatches, args.localization, args.tokyo, args.aachen_server, args.inloc_server,
                        args.paper_figures, args.retrieval)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(body)
    if args.readme:
        update_readme(args.readme, body)
    if not args.output and not args.readme:
        print(body)
    return body


if __name__ == "__main__":
    run_cli(main)
