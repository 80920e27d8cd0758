"""Only here to put the hloc hook (a .pth file) at the root of site-packages.

pyproject.toml holds all metadata. The .pth file runs one guarded import at interpreter start
(see hndesc_features/hloc/hook.py); it works for `pip install .` and `pip install -e .`.
"""
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

PTH = "hndesc_features_hloc.pth"
PTH_LINE = (
    "import os, sys; exec('try:\\n import hndesc_features.hloc.hook as _h; _h.install()\\n"
    "except Exception:\\n pass') if not os.environ.get('HNDESC_NO_HLOC_HOOK') else None\n"
)


class BuildPyWithPth(build_py):
    def run(self):
        super().run()
        targets = [Path(self.build_lib)]
        if getattr(self, "editable_mode", False):
            # editable wheels are assembled from the install command's target dir
            targets.append(Path(self.get_finalized_command("install").install_lib))
        for t in targets:
            t.mkdir(parents=True, exist_ok=True)
            (t / PTH).write_text(PTH_LINE)

    def get_outputs(self, include_bytecode=1):
        return super().get_outputs(include_bytecode) + [str(Path(self.build_lib) / PTH)]



def packages():
    """hndesc_features and its subpackages, plus confs/ and training/ mapped inside it."""
    pkgs = ["hndesc_features"] + [f"hndesc_features.{p}" for p in find_packages("hndesc_features")]
    pkgs += ["hndesc_features.training"] + [f"hndesc_features.training.{p}" for p in find_packages("training")]
    return pkgs + ["hndesc_features._confs"]


setup(
    packages=packages(),
    package_dir={"hndesc_features._confs": "confs", "hndesc_features.training": "training"},
    cmdclass={"build_py": BuildPyWithPth},
)
