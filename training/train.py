"""Train a method from a YAML config.

    python -m hndesc_features.training.train confs/train/residual_sift.yaml --output runs/residual_sift [--resume] \
        [train.steps=2000 data.homography.mode=full ...]

Multi-process (DDP, gloo on CPU / nccl on GPU):

    torchrun --nproc_per_node 2 -m hndesc_features.training.train confs/train/residual_sift.yaml --output runs/x

Installed from the wheel, the module is ``hndesc_features.training.train``.
"""
from __future__ import annotations

import argparse
import logging
import sys

from hndesc_features.models.checkpoints import CheckpointError

from .config import ConfigError, load_config
from .trainer import run


def main(argv=None) -> int:
    from .config import list_configs

    parser = argparse.ArgumentParser(prog="python -m hndesc_features.training.train", description=__doc__,
                                     epilog="shipped training configs (by name):\n" + "\n".join(
                                         f"  {n:<32} {d}" for n, d in list_configs().items()),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="YAML config (path, or name under confs/train/)")
    parser.add_argument("--output", required=True, help="run folder (checkpoints, logs, curves)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --output exactly")
    parser.add_argument("--overwrite", action="store_true", help="start over in an existing --output")
    parser.add_argument("overrides", nargs="*", help="dotted key=value config overrides")
    args = parser.parse_intermixed_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(name)s %(levelname)s] %(message)s")
    try:
        conf = load_config(args.config, args.overrides)
        import shlex

        command = " ".join(["python -m hndesc_features.training.train", *(shlex.quote(a) for a in
                                                                            (argv if argv is not None else sys.argv[1:]))])
        summary = run(conf, args.output, resume=args.resume, overwrite=args.overwrite, command=command)
    except (ConfigError, CheckpointError, FileExistsError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    state = "finished" if summary["finished"] else f"stopped at step {summary['step']} (resume with --resume)"
    print(f"{conf['name']}: {state}; {summary['train_seconds']} s; best {summary['best']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
