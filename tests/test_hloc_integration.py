"""Our confs and extractors inside an unmodified hloc, and our CLIs reproducing hloc's files."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import ROOT, read_h5, requires_hloc, run_py
from hndesc_features import extract_features, match_features, pairs_from_exhaustive
from hndesc_features.confs import feature_confs, get_feature_conf, get_matcher_conf
from hndesc_features.hloc.hook import inject_confs, patch_source

OURS_HANDCRAFTED = ["rootsift", "rootsift_upright", "orb", "surf"]


def test_patch_source_appends_on_the_closing_line():
    src = "import x\nconfs = {\n  'a': 1,\n}  # é comment\n\ndef main():\n    return confs\n"
    out = patch_source(src)
    lines = out.splitlines()
    assert len(lines) == len(src.splitlines())  # no line added: hloc's line numbers are kept
    assert lines[3].startswith("}; __import__('hndesc_features.hloc'") and lines[3].endswith("# é comment")
    ns = {}
    exec(compile(out.replace("import x", "pass"), "m", "exec"), ns)
    assert ns["main"].__code__.co_firstlineno == 6 and set(ns["confs"]) >= {"a", "rootsift"}
    assert patch_source("x = 1\n") is None


@requires_hloc
def test_hooked_hloc_keeps_its_line_numbers():
    """Every function of the hooked hloc.extract_features starts on the line its file shows, and a
    traceback through it names hloc's real line."""
    code = (
        "import inspect, traceback, hloc.extract_features as e\n"
        "from pathlib import Path\n"
        "assert 'rootsift_upright' in e.confs\n"
        "lines = Path(e.__file__).read_text().splitlines()\n"
        "fs = [f for f in vars(e).values() if inspect.isfunction(f) and f.__module__ == e.__name__]\n"
        "assert fs\n"
        "for f in map(inspect.unwrap, fs):\n"
        "    n = f.__code__.co_firstlineno\n"
        "    assert lines[n - 1].lstrip().startswith(('def ' + f.__name__, '@')), (f.__name__, n, lines[n - 1])\n"
        "try:\n"
        "    e.main({'model': {'name': 'hf_no_such'}, 'preprocessing': {}, 'output': 'x'}, Path('/nonexistent'))\n"
        "except Exception:\n"
        "    tb = [fr for fr in traceback.extract_tb(__import__('sys').exc_info()[2]) if fr.filename == e.__file__]\n"
        "    assert tb and all(lines[fr.lineno - 1].strip() == fr.line for fr in tb), tb\n"
        "    print('TB-OK', len(tb))\n")
    p = run_py(["-c", code], cwd=ROOT.parent)
    assert "TB-OK" in p.stdout, p.stdout + p.stderr


def test_inject_never_overrides_existing_names():
    sentinel = {"output": "hloc-own"}
    confs = {"rootsift": sentinel}
    added = inject_confs(confs)
    assert confs["rootsift"] is sentinel and "rootsift" not in added
    assert set(added) == set(feature_confs()) - {"rootsift"}


def test_hook_survives_broken_hloc(tmp_path):
    """A broken hloc on the path must not break start-up, our package, or `python -m`."""
    fake = tmp_path / "fake" / "hloc"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise RuntimeError('this hloc is broken')\n")
    env = {"PYTHONPATH": str(fake.parent)}
    p = run_py(["-c", "import hndesc_features.base_model as b; print('OK', b.HLOC_BASE)"], env_extra=env)
    assert "OK False" in p.stdout and "Traceback" not in p.stderr
    p = run_py(["-c", "print('started')"], env_extra=env)
    assert p.stdout.strip() == "started" and p.stderr == ""
    # our own CLI works without a usable hloc
    p = run_py(["-m", "hndesc_features.extract_features", "--help"], env_extra=env)
    assert "--conf" in p.stdout


@requires_hloc
def test_hloc_cli_lists_our_confs_and_env_switch():
    p = run_py(["-m", "hloc.extract_features", "--help"], cwd=ROOT.parent)
    for name in feature_confs():
        assert name in p.stdout, name
    assert "superpoint_aachen" in p.stdout
    p = run_py(["-m", "hloc.extract_features", "--help"], env_extra={"HNDESC_NO_HLOC_HOOK": "1"})
    assert "rootsift_upright" not in p.stdout and "superpoint_aachen" in p.stdout


@requires_hloc
def test_register_for_python_users():
    code = ("import hloc.extract_features as e\n"
            "import hndesc_features.hloc as h\n"
            "assert 'surf' not in e.confs\n"
            "added = h.register()\n"
            "from hloc.utils.base_model import dynamic_load\n"
            "import hloc.extractors\n"
            "M = dynamic_load(hloc.extractors, e.confs['surf']['model']['name'])\n"
            "print('ADDED', sorted(added), M.__module__, M.__name__)\n")
    p = run_py(["-c", code], env_extra={"HNDESC_NO_HLOC_HOOK": "1"})
    assert "hloc.extractors.hf_surf SURF" in p.stdout
    assert "'surf'" in p.stdout and "'rootsift'" in p.stdout


@requires_hloc
@pytest.mark.parametrize("name", OURS_HANDCRAFTED)
def test_hloc_and_our_cli_write_identical_files(name, two_photos, tmp_path):
    # hloc's CLI in a fresh interpreter (our confs come from the start-up hook); ours in this process
    # (its `python -m` entry point is exercised by test_extract_io and test_readme)
    run_py(["-m", "hloc.extract_features", "--conf", name, "--image_dir", str(two_photos), "--export_dir",
            str(tmp_path / "h"), "--as_half"])
    extract_features.cli(["--conf", name, "--image_dir", str(two_photos), "--export_dir", str(tmp_path / "o"),
                          "--as_half"])
    fname = get_feature_conf(name)["output"] + ".h5"
    a, b = read_h5(tmp_path / "h" / fname), read_h5(tmp_path / "o" / fname)
    assert set(a) == set(b) and len(a) >= 10
    for k in a:
        (xa, attrs_a), (xb, attrs_b) = a[k], b[k]
        assert xa.dtype == xb.dtype and xa.shape == xb.shape, k
        np.testing.assert_array_equal(xa, xb, err_msg=k)
        assert attrs_a.keys() == attrs_b.keys(), k
        for key in attrs_a:
            assert attrs_a[key] == attrs_b[key] and np.asarray(attrs_a[key]).dtype == np.asarray(attrs_b[key]).dtype


@requires_hloc
def test_our_matching_equals_hlocs(two_photos, tmp_path):
    from hloc import match_features as hmf

    feats = extract_features.main(get_feature_conf("rootsift"), two_photos, tmp_path)
    pairs = pairs_from_exhaustive.main(tmp_path / "pairs.txt", features=feats)
    for conf in ("NN-mutual", "NN-ratio"):
        ours = match_features.main(get_matcher_conf(conf), pairs, feats, matches=tmp_path / f"o-{conf}.h5")
        theirs = hmf.main(hmf.confs[conf], pairs, feats, matches=tmp_path / f"h-{conf}.h5")
        a, b = read_h5(ours), read_h5(theirs)
        assert set(a) == set(b) == {"motorcycle_left.jpg/motorcycle_right.jpg/matches0",
                                    "motorcycle_left.jpg/motorcycle_right.jpg/matching_scores0"}
        for k in a:
            assert a[k][0].dtype == b[k][0].dtype
            np.testing.assert_array_equal(a[k][0], b[k][0])
        m = a["motorcycle_left.jpg/motorcycle_right.jpg/matches0"][0]
        assert (m > -1).sum() > 300


@pytest.mark.heavy(90)
@requires_hloc
def test_surf_sfm_through_hloc_registers_sacre_coeur(sacre_coeur, tmp_path):
    """The acceptance run: hloc CLI with --conf surf, hloc NN-mutual, hloc reconstruction (at full
    size: on 640-px copies the seeded mapper still registered 4, 5 or 10 of the 10 photos from one
    run to the next)."""
    run_py(["-m", "hloc.extract_features", "--conf", "surf", "--image_dir", str(sacre_coeur),
            "--export_dir", str(tmp_path)])
    code = f"""
from pathlib import Path
import pycolmap
from hloc import match_features, pairs_from_exhaustive
from hloc.reconstruction import create_empty_db, get_image_ids, import_images, run_reconstruction
from hloc.triangulation import import_features, import_matches
out = Path({str(tmp_path)!r})
images = Path({str(sacre_coeur)!r})
feats = out / {get_feature_conf('surf')['output'] + '.h5'!r}
pairs = out / 'pairs.txt'
# the pairs in a fixed order: from the features file, hloc lists the names through a Python set, so
# each pair's direction (and with it the order of the matches the seeded RANSAC samples) followed the
# process's hash seed, and the same features registered 6 to 10 images, in 3 to 66 s of mapping
pairs_from_exhaustive.main(pairs, image_list=sorted(p.name for p in images.iterdir()))
m = match_features.main(match_features.confs['NN-mutual'], pairs, feats.stem, out)
# hloc's reconstruction.main step by step, with COLMAP's randomness fixed: hloc's geometric
# verification and mapper draw unseeded RANSAC samples on all threads, and on a loaded machine the
# same features registered 3, 5 or 10 of the 10 images from one run to the next
sfm = out / 'sfm'
sfm.mkdir()
db_path = sfm / 'database.db'
create_empty_db(db_path)
import_images(images, db_path, pycolmap.CameraMode.AUTO)
ids = get_image_ids(db_path)
with pycolmap.Database.open(db_path) as db:
    import_features(ids, db, feats)
    import_matches(ids, db, pairs, m)
pycolmap.verify_matches(db_path, pairs, options=dict(ransac=dict(max_num_trials=20000, min_inlier_ratio=0.1,
                                                                 random_seed=0)))
rec = run_reconstruction(sfm, db_path, images, options={{'random_seed': 0, 'num_threads': 1}})
print('REGISTERED', rec.num_reg_images(), rec.num_points3D())
"""
    p = run_py(["-c", code], timeout=900)
    reg = int(p.stdout.split("REGISTERED")[1].split()[0])
    assert reg >= 8, p.stdout[-2000:]
