"""Weights: list what is available, show where a name resolves, install a checkpoint.

    python -m hndesc_features.weights list
    python -m hndesc_features.weights path residual_sift
    python -m hndesc_features.weights install hndesc_caps ~/Downloads/hndesc_caps.pth [--force]

`install` checks that the file loads (torch.load(weights_only=True)) into the architecture the
name needs, then copies it to the user weights directory ($HNDESC_WEIGHTS_DIR, default
~/.cache/hndesc_features/weights), where every conf looks first.
"""
from __future__ import annotations

import argparse
import sys

from . import ENV_VAR, PACKAGE_DIR, REGISTRY, canonical, install, installed, resolve, user_dir


def main(argv=None) -> int:
    from ..models.checkpoints import CheckpointError

    names = "\n".join(f"  {n:<26} {e.description}{'' if e.shipped else ' (user-installed)'}"
                      for n, e in REGISTRY.items())
    p = argparse.ArgumentParser(prog="python -m hndesc_features.weights", description=__doc__,
                                epilog="known weights names:\n" + names,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="every weights file found (user directory first) and the known names")
    sp = sub.add_parser("path", help="the file a weights name resolves to")
    sp.add_argument("name", help="weights name, e.g. residual_sift")
    si = sub.add_parser("install", help="check a checkpoint and copy it to the user weights directory")
    si.add_argument("name", help="weights name the confs look for (e.g. hndesc_caps) or a name of yours")
    si.add_argument("file", help="the checkpoint file (.pt / .pth)")
    si.add_argument("--force", action="store_true", help="replace a file already installed under that name")
    a = p.parse_args(argv)
    try:
        if a.cmd == "list":
            print(f"user weights directory: {user_dir()}  (${ENV_VAR})")
            print(f"package weights:        {PACKAGE_DIR}")
            found = installed()
            shown = set()
            for name, path, user in found:
                shadow = " (overrides the shipped file)" if user and (PACKAGE_DIR / path.name).is_file() else ""
                where = "user" if user else ("package" if path.parent == PACKAGE_DIR else "hloc checkout")
                where += " (shadowed)" if not user and name in shown else ""
                shown.add(name)
                print(f"  {name:<26} {where:<18} {path.stat().st_size / 1e6:6.2f} MB{shadow}")
            missing = [n for n, e in REGISTRY.items() if n not in shown]
            for n in missing:
                print(f"  {n:<26} {'missing':<18} -> {REGISTRY[n].source}, then "
                      f"`python -m hndesc_features.weights install {n} FILE`")
        elif a.cmd == "path":
            print(resolve(canonical(a.name)))
        else:
            dst = install(a.name, a.file, force=a.force)
            print(f"installed {dst} ({dst.stat().st_size / 1e6:.2f} MB)")
    except (FileNotFoundError, CheckpointError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
