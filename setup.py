"""Only here to put the hloc hook's start-up files at the root of site-packages.

pyproject.toml holds all metadata. Two files call `hndesc_features.hloc.hook:startup` at
interpreter start (see hndesc_features/hloc/hook.py), for `pip install .` and `pip install -e .`:
the .pth file's guarded import line (Python <= 3.14) and the PEP 829 .start file of the same
name (Python >= 3.15, where it also disables the .pth file's import line).
"""
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

PTH = "hndesc_features_hloc.pth"
PTH_LINE = "import sys; exec('try:\\n import hndesc_features.hloc.hook as _h; _h.startup()\\nexcept Exception:\\n pass')\n"
START = "hndesc_features_hloc.start"
START_LINE = "hndesc_features.hloc.hook:startup\n"
STARTUP_FILES = {PTH: PTH_LINE, START: START_LINE}


class BuildPyWithPth(build_py):
    def run(self):
        super().run()
        targets = [Path(self.build_lib)]
        if getattr(self, "editable_mode", False):
            # editable wheels are assembled from the install command's target dir
            targets.append(Path(self.get_finalized_command("install").install_lib))
        for t in targets:
            t.mkdir(parents=True, exist_ok=True)
            for name, text in STARTUP_FILES.items():
                (t / name).write_text(text)

    def get_outputs(self, include_bytecode=1):
        return super().get_outputs(include_bytecode) + [str(Path(self.build_lib) / n) for n in STARTUP_FILES]



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
