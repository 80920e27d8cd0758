"""Extraction speed and peak memory per conf: whole hloc CLI processes, or one model per image size.

    python -m benchmarks.speed --conf rootsift,hndesc,residual_sift --image_dir PHOTOS --rounds 3 \
        --output speed_cli.json [--threads N]
    python -m benchmarks.speed --conf rootsift,surf --sizes 640,1024,1600 --devices cpu,cuda \
        --output speed.json [--image PHOTO] [--iters 10] [--threads 4]

**--image_dir (what a user pays).** Every round runs, for each conf in turn (interleaved, so that load
from other processes on a shared machine hits every conf alike), one whole
`python -m hloc.extract_features --conf C --image_dir PHOTOS --export_dir TMP` process at the library
default thread counts (or --threads N: OMP/MKL/OpenCV threads) and measures its wall-clock time, its
CPU time (user + system of the process and its reaped children: hloc's data-loader worker) and its peak
RSS (ru_maxrss of os.wait4), all from the process's own rusage: start-up, image decoding, resizing,
extraction and the .h5 writing included. Each row reports per-image figures, the ratio to --reference
per round (wall and CPU; the median over rounds is the figure, min and max beside it) and the fastest
round. Written as speed.json / speed.md with `"mode": "cli"`.

**--image (one model, default).**
For every (conf, device, size) a fresh child process loads the model, resizes the image so its
long side is `size` (the conf's own resize_max is ignored), runs --warmup untimed and --iters
timed forward passes (torch.no_grad, CUDA synchronised) and reports images/s, ms/image, the
number of keypoints, the CPU time of the process per image, the process's peak RSS and its increase over the RSS before the first
forward (CPU), and the peak CUDA memory allocated (torch.cuda.max_memory_allocated). OpenCV SIFT
(cv2.SIFT_create, CPU, same image, same thread count) is measured in the same run and each row
gets its speed ratio to SIFT at the same size, and its time ratio to --reference (default rootsift,
wall and CPU time: the "≤ 1.5× RootSIFT" figures). --rounds N repeats every job N times, interleaved,
and keeps the fastest, so that load from other processes on a shared machine does not pick one
conf. CUDA rows are skipped when CUDA is absent.
Writes speed.json and speed.md.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import multiprocessing as mp
import os
import platform
import resource
import time
from pathlib import Path
from typing import Optional

import numpy as np

from .common import BenchmarkError, logger, resolve_feature_conf, run_cli, shared_data_dir, split_names, write_json

SIFT = "opencv-sift"


def default_image() -> Path:
    data = shared_data_dir()
    if data is not None:
        p = data / "strecha" / "fountain-P11" / "images" / "0000.jpg"  # 3072×2048: no up-sampling
        if p.exists():
            return p
    try:
        from hndesc_features.training.datasets.dev_images import heldout_images

        imgs = heldout_images()
        if imgs:
            return imgs[0]
    except ImportError:
        pass
    raise BenchmarkError("No default image found; pass --image PATH.")


def _rss_mib() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _load_image(path: str, size: int, grayscale: bool) -> np.ndarray:
    import cv2

    img = cv2.imread(path, (cv2.IMREAD_GRAYSCALE if grayscale else cv2.IMREAD_COLOR) | cv2.IMREAD_IGNORE_ORIENTATION)
    if img is None:
        raise BenchmarkError(f"Cannot read {path}.")
    h, w = img.shape[:2]
    s = size / max(h, w)
    img = cv2.resize(img, (int(round(w * s)), int(round(h * s))),
                     interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
    if not grayscale:
        img = img[:, :, ::-1]
    return np.ascontiguousarray(img)


def _build_model(conf: dict):
    name = conf["model"]["name"]
    if name.startswith("hf_"):
        from hndesc_features.extractors import load_model

        return load_model(conf["model"])
    try:
        from hloc import extractors
        from hloc.utils.base_model import dynamic_load
    except ImportError as e:
        raise BenchmarkError(f"Conf model '{name}' is an hloc extractor and hloc cannot be imported ({e}).") from None
    return dynamic_load(extractors, name)(conf["model"])


def measure(job: dict) -> dict:
    """Runs in a fresh child process: one (conf, device, size) measurement."""
    import cv2
    import torch

    if job.get("threads"):
        torch.set_num_threads(job["threads"])
        cv2.setNumThreads(job["threads"])
    out = {k: job[k] for k in ("conf", "device", "size")}
    iters, warmup = job["iters"], job["warmup"]
    if job["conf"] == SIFT:
        img = _load_image(job["image"], job["size"], True)
        sift = cv2.SIFT_create(nfeatures=job["sift_nfeatures"])
        base = _rss_mib()
        for _ in range(warmup):
            sift.detectAndCompute(img, None)
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(iters):
            kps, _ = sift.detectAndCompute(img, None)
        dt, dc = time.perf_counter() - t0, time.process_time() - c0
        out.update(num_keypoints=len(kps), image_size=[img.shape[1], img.shape[0]])
    else:
        conf = job["conf_dict"]
        gray = bool(conf.get("preprocessing", {}).get("grayscale", False))
        img = _load_image(job["image"], job["size"], gray)
        x = torch.from_numpy(img.astype(np.float32) / 255.0)
        x = x[None, None] if gray else x.permute(2, 0, 1)[None]
        device = torch.device(job["device"])
        model = _build_model(conf).eval().to(device)
        x = x.to(device)
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        base = _rss_mib()
        with torch.no_grad():
            for _ in range(warmup):
                pred = model({"image": x})
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(iters):
                pred = model({"image": x})
            if device.type == "cuda":
                torch.cuda.synchronize()
            dt, dc = time.perf_counter() - t0, time.process_time() - c0
        kp = pred.get("keypoints")
        out.update(num_keypoints=int(kp[0].shape[0]) if kp is not None else None,
                   image_size=[img.shape[1], img.shape[0]])
        if device.type == "cuda":
            out["peak_cuda_mib"] = torch.cuda.max_memory_allocated() / 2 ** 20
            out["gpu"] = torch.cuda.get_device_name(device)
    peak = _peak_rss_mib()
    # CPU time of the process (all its threads): with --threads 1 it is the work done, unlike the wall
    # time barely affected by other processes competing for the cores.
    out.update(images_per_s=iters / dt, ms_per_image=1000.0 * dt / iters, cpu_ms_per_image=1000.0 * dc / iters,
               peak_rss_mib=peak,
               peak_extra_rss_mib=max(0.0, peak - base), threads=torch.get_num_threads())
    return out


def _run_job(job: dict) -> dict:
    ctx = mp.get_context("spawn")
    with cf.ProcessPoolExecutor(max_workers=1, mp_context=ctx) as ex:
        try:
            return ex.submit(measure, job).result()
        except BenchmarkError:
            raise
        except Exception as e:
            return {**{k: job[k] for k in ("conf", "device", "size")}, "error": f"{type(e).__name__}: {e}"}


def machine_info() -> dict:
    import torch

    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cpu_count": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
            "cuda": torch.cuda.is_available()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    try:
        import cv2

        info["opencv"] = cv2.__version__
    except ImportError:
        pass
    return info


def run(confs: list[str], sizes: list[int], devices: list[str], image: Path, iters: int = 5, warmup: int = 1,
        threads: Optional[int] = None, sift_nfeatures: int = 4096, reference: Optional[str] = "rootsift",
        rounds: int = 1) -> dict:
    """rounds > 1 measures every job that many times, interleaved (round-robin over the jobs), and keeps
    each job's fastest round: on a shared machine a burst of load then hits one round, not one conf."""
    import torch

    if "cuda" in devices and not torch.cuda.is_available():
        logger.warning("CUDA is not available: CUDA measurements skipped.")
        devices = [d for d in devices if d != "cuda"]
    conf_dicts = {c: resolve_feature_conf(c) for c in confs}
    jobs = []
    for size in sizes:
        jobs.append({"conf": SIFT, "device": "cpu", "size": size})
        for c in confs:
            for d in devices:
                jobs.append({"conf": c, "device": d, "size": size, "conf_dict": conf_dicts[c]})
    best: list[Optional[dict]] = [None] * len(jobs)
    for rnd in range(max(1, rounds)):
        for i, j in enumerate(jobs):
            j.update(image=str(image), iters=iters, warmup=warmup, threads=threads, sift_nfeatures=sift_nfeatures)
            logger.info(f"speed: {j['conf']} on {j['device']} at {j['size']} px" + (f" (round {rnd + 1})" if rounds > 1 else ""))
            r = _run_job(j)
            if best[i] is None or "error" in best[i] or ("error" not in r and r["ms_per_image"] < best[i]["ms_per_image"]):
                best[i] = r
    rows = [r for r in best if r is not None]
    sift = {r["size"]: r.get("images_per_s") for r in rows if r["conf"] == SIFT}
    for r in rows:
        if r.get("images_per_s") and sift.get(r["size"]):
            r["speed_vs_sift"] = r["images_per_s"] / sift[r["size"]]
    ref = {(r["size"], r["device"]): r for r in rows if r["conf"] == reference and "error" not in r}
    for r in rows:
        b = ref.get((r["size"], r["device"]))
        if b is not None and "error" not in r:  # time relative to the reference conf (1.5 = 50 % slower)
            r["time_vs_ref"] = r["ms_per_image"] / b["ms_per_image"]
            r["cpu_time_vs_ref"] = r["cpu_ms_per_image"] / b["cpu_ms_per_image"]
    return {"machine": machine_info(), "image": str(image), "iters": iters, "warmup": warmup, "threads": threads,
            "rounds": rounds, "reference": reference if ref else None, "results": rows}


IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG")


def _cli_process(conf: str, image_dir: Path, export_dir: Path, threads: Optional[int]) -> dict:
    """One whole `python -m hloc.extract_features` process: wall, CPU (user + sys, reaped children
    included) and peak RSS from its own rusage (os.wait4)."""
    import shutil
    import subprocess
    import sys

    shutil.rmtree(export_dir, ignore_errors=True)
    export_dir.mkdir(parents=True)
    env = dict(os.environ)
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), OPENCV_FOR_THREADS_NUM=str(threads))
    cmd = [sys.executable, "-m", "hloc.extract_features", "--conf", conf, "--image_dir", str(image_dir),
           "--export_dir", str(export_dir)]
    log = export_dir / "log.txt"
    with open(log, "w") as fd:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=fd, stderr=subprocess.STDOUT, env=env)
        _, status, ru = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        tail = log.read_text()[-600:]
        raise BenchmarkError(f"`{' '.join(cmd)}` failed (exit {proc.returncode}):\n{tail}")
    feats = sorted(export_dir.glob("*.h5"))
    n_kp = None
    if feats:
        import h5py

        with h5py.File(feats[0], "r") as f:
            counts = []
            f.visititems(lambda k, v: counts.append(v.shape[0]) if k.endswith("keypoints") else None)
            n_kp = float(np.mean(counts)) if counts else None
    return {"wall_s": wall, "cpu_s": ru.ru_utime + ru.ru_stime, "peak_rss_mib": ru.ru_maxrss / 1024.0,
            "mean_keypoints": n_kp}


def run_cli_processes(confs: list[str], image_dir: Path, rounds: int = 3, reference: Optional[str] = "rootsift",
                      threads: Optional[int] = None, work_dir: Optional[Path] = None) -> dict:
    """--image_dir mode: `rounds` interleaved rounds of one hloc CLI process per conf (module docstring)."""
    import tempfile

    try:
        import hloc.extract_features as hloc_extract
    except ImportError as e:
        raise BenchmarkError(f"--image_dir times hloc's CLI and hloc cannot be imported ({e}).") from None
    missing = [c for c in confs if c not in hloc_extract.confs]
    if missing:
        raise BenchmarkError(f"{missing} not among hloc's extract_features confs (is the hndesc_features plugin "
                             "installed?): python -m hloc.extract_features --help lists them.")
    images = sorted(p for p in Path(image_dir).rglob("*") if p.suffix in IMAGE_EXTS)
    if not images:
        raise BenchmarkError(f"No image ({', '.join(IMAGE_EXTS)}) under {image_dir}.")
    if reference and reference not in confs:
        confs = [reference, *confs]
    work = Path(work_dir or tempfile.mkdtemp(prefix="hf_speed_"))
    per_round: dict[str, list[dict]] = {c: [] for c in confs}
    for rnd in range(max(1, rounds)):
        for c in confs:
            logger.info(f"speed: hloc.extract_features --conf {c} on {len(images)} images (round {rnd + 1}/{rounds})")
            per_round[c].append(_cli_process(c, image_dir, work / c, threads))
    rows = []
    for c in confs:
        rs = per_round[c]
        row = {"conf": c, "rounds": rs, "images": len(images),
               "wall_s": float(np.median([r["wall_s"] for r in rs])), "cpu_s": float(np.median([r["cpu_s"] for r in rs])),
               "best_wall_s": min(r["wall_s"] for r in rs), "peak_rss_mib": max(r["peak_rss_mib"] for r in rs),
               "mean_keypoints": rs[0]["mean_keypoints"]}
        row["ms_per_image"] = 1000.0 * row["wall_s"] / len(images)
        row["cpu_ms_per_image"] = 1000.0 * row["cpu_s"] / len(images)
        if reference:
            ref = per_round[reference]
            w = [a["wall_s"] / b["wall_s"] for a, b in zip(rs, ref)]
            u = [a["cpu_s"] / b["cpu_s"] for a, b in zip(rs, ref)]
            row.update(time_vs_ref=float(np.median(w)), time_vs_ref_range=[min(w), max(w)],
                       cpu_time_vs_ref=float(np.median(u)), cpu_time_vs_ref_range=[min(u), max(u)])
        rows.append(row)
    return {"mode": "cli", "machine": machine_info(), "image_dir": str(image_dir), "images": len(images),
            "threads": threads, "rounds": rounds, "reference": reference, "results": rows}


def markdown_cli(res: dict) -> str:
    m, ref = res["machine"], res.get("reference") or "ref"
    lines = [f"# Whole-process extraction speed through hloc ({m['cpu']}, {m['cpu_count']} cores; torch {m['torch']}, "
             f"{res['threads'] or 'default'} threads; {res['images']} images of {res['image_dir']}; "
             f"{res['rounds']} interleaved rounds)", "",
             f"One `python -m hloc.extract_features` process per conf and round. Times are medians over rounds; "
             f"×{ref} is the median of the per-round ratios (min–max in brackets).", "",
             f"| conf | wall s | ms / image | CPU ms / image | wall ×{ref} | CPU ×{ref} | mean #kp | peak RSS (MiB) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in res["results"]:
        rel = "–"
        if "time_vs_ref" in r:
            lo, hi = r["time_vs_ref_range"]
            clo, chi = r["cpu_time_vs_ref_range"]
            rel = (f"{r['time_vs_ref']:.2f} ({lo:.2f}–{hi:.2f}) | {r['cpu_time_vs_ref']:.2f} ({clo:.2f}–{chi:.2f})")
        else:
            rel = "– | –"
        kp = f"{r['mean_keypoints']:.0f}" if r.get("mean_keypoints") is not None else "–"
        lines.append(f"| {r['conf']} | {r['wall_s']:.1f} | {r['ms_per_image']:.0f} | {r['cpu_ms_per_image']:.0f} | "
                     f"{rel} | {kp} | {r['peak_rss_mib']:.0f} |")
    return "\n".join(lines) + "\n"


def markdown(res: dict) -> str:
    m = res["machine"]
    refname = res.get("reference")
    rounds = res.get("rounds", 1)
    lines = [f"# Extraction speed ({m['cpu']}, {m['cpu_count']} cores" + (f", {m.get('gpu')}" if m.get("gpu") else "")
             + f"; torch {m['torch']}, {res['threads'] or 'default'} threads, {res['iters']} iterations"
             + (f", best of {rounds} interleaved rounds" if rounds > 1 else "") + ")", "",
             "×SIFT: images/s relative to OpenCV SIFT (default settings); "
             + (f"time ×{refname}: ms/image relative to {refname} (wall, and CPU time of the process)." if refname else ""),
             "",
             f"| conf | device | size | images/s | ms/image | CPU ms/image | ×SIFT | time ×{refname or 'ref'} | "
             f"CPU time ×{refname or 'ref'} | #kp | peak RSS (MiB) | +RSS (MiB) | peak CUDA (MiB) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["results"]:
        if "error" in r:
            lines.append(f"| {r['conf']} | {r['device']} | {r['size']} | error: {r['error']} ||||||||||")
            continue
        cuda = f"{r['peak_cuda_mib']:.0f}" if "peak_cuda_mib" in r else "–"
        rel = " | ".join(f"{r[k]:.2f}" if k in r else "–" for k in ("time_vs_ref", "cpu_time_vs_ref"))
        cpu = f"{r['cpu_ms_per_image']:.1f}" if "cpu_ms_per_image" in r else "–"
        lines.append(f"| {r['conf']} | {r['device']} | {r['size']} | {r['images_per_s']:.2f} | {r['ms_per_image']:.1f} | "
                     f"{cpu} | {r.get('speed_vs_sift', float('nan')):.2f} | {rel} | {r['num_keypoints']} | "
                     f"{r['peak_rss_mib']:.0f} | {r['peak_extra_rss_mib']:.0f} | {cuda} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--conf", required=True, help="feature conf(s), comma-separated")
    parser.add_argument("--sizes", default="640,1024,1600", help="long sides in px")
    parser.add_argument("--devices", default="cpu,cuda", help='comma-separated devices (cuda rows are skipped without CUDA)')
    parser.add_argument("--image_dir", type=Path,
                        help="folder of photos: time whole `python -m hloc.extract_features` processes on it "
                             "(interleaved rounds; --sizes/--devices/--iters/--image do not apply)")
    parser.add_argument("--image", type=Path, help="photo to resize (default: a 3072 px Strecha image)")
    parser.add_argument("--iters", type=int, default=5, help='timed forward passes per measurement')
    parser.add_argument("--warmup", type=int, default=1, help='untimed passes before timing')
    parser.add_argument("--threads", type=int, help="torch/OpenCV threads (default: library defaults)")
    parser.add_argument("--sift_nfeatures", type=int, default=4096, help='nfeatures of the OpenCV SIFT reference row')
    parser.add_argument("--reference", default="rootsift",
                        help="conf the other rows' times are divided by (time ×ref columns; default rootsift)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="measure every job this many times, interleaved, keep the fastest (shared machines)")
    parser.add_argument("--output", type=Path, required=True, help='results JSON (.md beside it)')
    args = parser.parse_args(argv)
    if args.image_dir is not None:
        if not args.image_dir.is_dir():
            raise BenchmarkError(f"--image_dir {args.image_dir} is not a folder.")
        res = run_cli_processes(split_names(args.conf), args.image_dir, args.rounds, args.reference or None,
                                args.threads)
        write_json(args.output, res)
        md = markdown_cli(res)
        args.output.with_suffix(".md").write_text(md)
        print(md)
        return res
    image = args.image or default_image()
    if not image.exists():
        raise BenchmarkError(f"{image} does not exist.")
    res = run(split_names(args.conf), [int(s) for s in split_names(args.sizes)], split_names(args.devices), image,
              args.iters, args.warmup, args.threads, args.sift_nfeatures, args.reference, args.rounds)
    write_json(args.output, res)
    md = markdown(res)
    args.output.with_suffix(".md").write_text(md)
    print(md)
    return res


if __name__ == "__main__":
    run_cli(main)
