"""Make an unmodified hloc see our extractors and confs.

hloc has no plugin registry: `extract_features` keeps its confs in a module-level dict that
argparse reads at import, and `dynamic_load` only accepts classes defined in a module named
`hloc.extractors.<name>`. A `sys.meta_path` finder therefore
- serves `hloc.extractors.hf_<x>` from our file `hndesc_features/extractors/<x>.py` (executed
  under hloc's module name, so `dynamic_load` accepts its class), and
- loads `hloc.extract_features` with one statement appended to the last line of its top-level
  `confs = {...}` (`}; <inject>`: no line is added, so hloc's tracebacks keep hloc's own line
  numbers), which adds our feature confs (never replacing a name hloc already defines).

Start-up: `startup()` runs at interpreter start from two files at the root of site-packages, so
the hook works before and after PEP 829 (Python 3.15: `.start` entry points replace `import`
lines in `.pth` files; a `.start` file disables the import lines of the `.pth` file of the same
name, so exactly one of the two runs on any Python):
- `hndesc_features_hloc.pth`: one guarded `import` line (Python <= 3.14 reads it);
- `hndesc_features_hloc.start`: `hndesc_features.hloc.hook:startup` (Python >= 3.15).
`HNDESC_NO_HLOC_HOOK=1` switches it off. It imports neither hloc nor torch and never raises.
"""
from __future__ import annotations

import ast
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from pathlib import Path

PREFIX = "hloc.extractors.hf_"
EXTRACT_MODULE = "hloc.extract_features"
EXTRACTORS_DIR = Path(__file__).resolve().parent.parent / "extractors"
EXTRACTOR_ALIASES = {"wlrn": "kcc"}  # hloc model-name aliases (hf_wlrn) served from their target's file
INJECT_LINE = "__import__('hndesc_features.hloc', fromlist=['inject_confs']).inject_confs(confs)"


def inject_confs(confs: dict) -> list[str]:
    """Add our feature confs to hloc's `confs` dict, skipping names hloc already has."""
    try:
        from hndesc_features.confs import feature_confs

        ours = feature_confs()
    except Exception as e:  # a broken conf must not break hloc itself
        sys.stderr.write(f"[hndesc_features] could not load confs: {e}\n")
        return []
    try:  # $HNDESC_KEYPOINTS: confs that can reuse keypoints read them from there
        from hndesc_features.keypoint_source import apply_env

        apply_env(ours)
    except Exception as e:
        sys.stderr.write(f"[hndesc_features] HNDESC_KEYPOINTS ignored: {e}\n")
    added = []
    for name, conf in ours.items():
        if name not in confs:
            confs[name] = conf
            added.append(name)
    return added


def patch_source(source: str) -> str | None:
    """hloc.extract_features' source with `; INJECT_LINE` appended right after the end of its
    top-level `confs = {...}` statement, on the same line (line count and numbers unchanged);
    None if there is no such statement."""
    tree = ast.parse(source)
    for node in tree.body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == "confs" for t in targets):
                lines = source.splitlines(keepends=True)
                i = node.end_lineno - 1
                raw = lines[i].encode("utf-8")  # end_col_offset counts UTF-8 bytes
                head, tail = raw[: node.end_col_offset].decode("utf-8"), raw[node.end_col_offset:].decode("utf-8")
                lines[i] = f"{head}; {INJECT_LINE}{tail}"
                return "".join(lines)
    return None


class _PatchedSourceLoader(importlib.machinery.SourceFileLoader):
    """Loads hloc.extract_features from its own file, with our confs injected (no .pyc)."""

    def get_code(self, fullname):
        path = self.get_filename(fullname)
        source = importlib.util.decode_source(self.get_data(path))
        try:
            patched = patch_source(source)
        except SyntaxError:
            patched = None
        return compile(patched if patched is not None else source, path, "exec", dont_inherit=True)


class HlocFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        try:
            if fullname.startswith(PREFIX):
                stem = fullname[len(PREFIX):]
                file = EXTRACTORS_DIR / f"{EXTRACTOR_ALIASES.get(stem, stem)}.py"
                if file.is_file() and not file.stem.startswith("_"):
                    return importlib.util.spec_from_file_location(fullname, file)
                return None
            if fullname == EXTRACT_MODULE:
                spec = importlib.machinery.PathFinder.find_spec(fullname, path)
                if spec is None or not isinstance(spec.loader, importlib.machinery.SourceFileLoader):
                    return None
                spec.loader = _PatchedSourceLoader(fullname, spec.origin)
                return spec
        except Exception:
            return None
        return None


def installed() -> bool:
    return any(isinstance(f, HlocFinder) for f in sys.meta_path)


def startup() -> None:
    """Interpreter start-up entry point (the .pth line and the PEP 829 .start file call this)."""
    try:
        import os

        if not os.environ.get("HNDESC_NO_HLOC_HOOK"):
            install()
    except Exception:
        pass


def install() -> None:
    """Put the finder first in sys.meta_path (idempotent, never raises)."""
    try:
        if not installed():
            sys.meta_path.insert(0, HlocFinder())
    except Exception:
        pass
