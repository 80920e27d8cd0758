"""Export a run's last checkpoint as a small shipped weights file.

    python -m hndesc_features.training.export runs/residual_sift   # → the user weights directory
    python -m hndesc_features.training.export runs/residual_sift --to my.pt

By default the file goes to the user weights directory (hndesc_features.weights.user_dir(),
$HNDESC_WEIGHTS_DIR), where every conf finds it by name; `--to hndesc_features/weights/<name>.pt`
ships it with the package (developers).

The file holds {format, arch, conf, state_dict, meta} and loads with torch.load(weights_only=True)
(see hndesc_features/models/checkpoints.py).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from hndesc_features.models.checkpoints import (
    CheckpointError, build_model, check_state_dict, export_weights, load_weights,
)
from hndesc_features.weights import user_dir

from .trainer import CKPT_NAME, _strip, load_checkpoint


def export_run(run_dir, to=None, name=None, best: bool = False) -> Path:
    run_dir = Path(run_dir)
    if best:  # the weights of the best validation step, kept by the trainer as <name>_best.pt
        import shutil

        cands = sorted(run_dir.glob("*_best.pt"))
        if not cands:
            raise CheckpointError(f"no *_best.pt in '{run_dir}' (validation never ran?)")
        load_weights(cands[0])  # checks the file
        name = name or cands[0].stem[: -len("_best")]
        to = Path(to) if to else user_dir() / f"{name}.pt"
        to.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(cands[0], to)
        return to
    path = run_dir / CKPT_NAME if run_dir.is_dir() else run_dir
    ck = load_checkpoint(path)
    conf = ck["config"]
    model = build_model(ck["arch"], _strip(conf["model"]))
    check_state_dict(model, ck["model"], f"checkpoint '{path}'")
    name = name or conf.get("name") or run_dir.name
    to = Path(to) if to else user_dir() / f"{name}.pt"
    meta = {"name": name, "step": int(ck["step"]), "train_seconds": round(float(ck.get("elapsed", 0)), 1),
            "config": json.dumps(conf, sort_keys=True)}
    return export_weights(to, ck["arch"], getattr(model, "conf", _strip(conf["model"])), ck["model"], meta)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m hndesc_features.training.export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="run folder (or a checkpoint file)")
    p.add_argument("--to", help="output .pt (default: <user weights directory>/<config name>.pt)")
    p.add_argument("--name", help="weights name (default: the config's name)")
    p.add_argument("--best", action="store_true", help="the best validation step's weights (<name>_best.pt)")
    a = p.parse_args(argv)
    try:
        out = export_run(a.run, a.to, a.name, a.best)
    except (CheckpointError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
