"""The README's hloc path (bash and Python blocks) runs verbatim, and the test command in the README is the one CI runs."""
from __future__ import annotations

import re
import shlex
import shutil

import numpy as np

from conftest import ROOT, requires_hloc, run_py


def _block(name: str, lang: str = "bash") -> str:
    text = (ROOT / "README.md").read_text()
    m = re.search(rf"<!-- {name}:begin -->\s*```{lang}\n(.*?)```\s*<!-- {name}:end -->", text, re.S)
    assert m, f"README has no {name} block"
    return m.group(1)


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert ci in readme and "pytest" in ci and "hloc-1.5-py3-none-any.whl" in ci
    assert len(readme.splitlines()) <= 250


# Four photos of a walk around the Château de Sceaux, and the one taken between the 2nd and the 3rd
# to localize against their model.
MAPPING = ["100_7100.JPG", "100_7101.JPG", "100_7103.JPG", "100_7104.JPG"]
QUERY = "100_7102.JPG"


@requires_hloc
def test_readme_hloc_path_runs_verbatim(tmp_path, shared_data):
    """Extract → pairs → match → reconstruction (bash block) → localize (Python block), as written."""
    import pycolmap

    photos = shared_data / "sceaux_castle" / "images"
    (tmp_path / "images" / "mapping").mkdir(parents=True)
    (tmp_path / "images" / "query").mkdir()
    for n in MAPPING:
        shutil.copy(photos / n, tmp_path / "images" / "mapping" / n)
    shutil.copy(photos / QUERY, tmp_path / "images" / "query" / QUERY)

    block = _block("hloc-usage")
    commands = [ln for ln in block.splitlines() if ln.strip() and not ln.startswith("#")]
    assert [shlex.split(c)[2] for c in commands] == ["hloc.extract_features", "hloc.pairs_from_exhaustive",
                                                     "hloc.match_features", "hloc.reconstruction"]
    for line in commands:
        args = shlex.split(line)
        assert args[:2] == ["python", "-m"], line
        run_py(args[1:], cwd=tmp_path)
    # every file a step's comment names exists
    named = re.findall(r"-> (outputs/\S+)", block)
    assert len(named) == 4, named
    for path in named:
        m = re.match(r"(.*)\{(.*)\}(.*)", path)
        for p in ([m[1] + x + m[3] for x in m[2].split(",")] if m else [path]):
            assert (tmp_path / p).exists(), p
    pairs = (tmp_path / "outputs" / "pairs-sfm.txt").read_text().splitlines()
    assert len(pairs) == 6 and {n for p in pairs for n in p.split()} == set(MAPPING)

    model = pycolmap.Reconstruction(tmp_path / "outputs" / "sfm")
    assert model.num_reg_images() == len(MAPPING)  # all four photos register
    assert model.num_points3D() > 500

    p = run_py(["-c", _block("hloc-localize", "python")], cwd=tmp_path)
    m = re.search(rf"{QUERY} localized, (\d+) inliers of (\d+) matches", p.stdout)
    assert m, p.stdout[-2000:] + p.stderr[-2000:]
    assert int(m[1]) >= 100 and int(m[1]) <= int(m[2])
    (line,) = (tmp_path / "outputs" / "poses.txt").read_text().splitlines()
    name, *values = line.split()
    assert name == QUERY and len(values) == 7
    q = np.array(values[:4], float)
    assert abs(np.linalg.norm(q) - 1) < 1e-6
    # the query was taken between the 2nd and the 3rd photo: those are the nearest cameras
    R = pycolmap.Rotation3d(np.r_[q[1:], q[0]]).matrix()  # qw qx qy qz -> pycolmap's xyzw
    centre = -R.T @ np.array(values[4:], float)
    dist = {img.name: np.linalg.norm(img.projection_center() - centre) for img in model.images.values()}
    assert sorted(dist, key=dist.get)[:2] in (MAPPING[1:3], MAPPING[2:0:-1]), dist
