"""The README's hloc block runs verbatim, and the test command in the README is the one CI runs."""
from __future__ import annotations

import re
import shlex

import h5py

from conftest import ROOT, requires_hloc, run_py


def _block(name: str) -> str:
    text = (ROOT / "README.md").read_text()
    m = re.search(rf"<!-- {name}:begin -->\s*```bash\n(.*?)```\s*<!-- {name}:end -->", text, re.S)
    assert m, f"README has no {name} block"
    return m.group(1)


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert ci in readme and "pytest" in ci and "hloc-1.5-py3-none-any.whl" in ci
    assert len(readme.splitlines()) <= 250


@requires_hloc
def test_readme_hloc_block_runs_verbatim(tmp_path, two_photos):
    import shutil

    shutil.copytree(two_photos, tmp_path / "images")
    lines = [ln for ln in _block("hloc-usage").splitlines() if ln.strip()]
    assert len(lines) == 3
    for line in lines:
        args = shlex.split(line)
        assert args[:2] == ["python", "-m"], line
        run_py(args[1:], cwd=tmp_path)
    pairs = (tmp_path / "outputs" / "pairs.txt").read_text().split()
    assert sorted(pairs) == ["motorcycle_left.jpg", "motorcycle_right.jpg"]
    matches = next((tmp_path / "outputs").glob("*NN-mutual*pairs.h5"))
    with h5py.File(matches) as f:
        grp = f[next(iter(f))]
        m0 = grp[next(iter(grp))]["matches0"][()]
    assert (m0 > -1).sum() > 100  # the two motorcycle photos share a lot
