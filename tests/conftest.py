"""Shared fixtures: real data locations, hloc availability, small image folders."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

# The suite runs on pytest-xdist workers (pyproject addopts `-n 2`): each worker's torch / OpenCV get an
# equal share of the cores, so that two workers do not oversubscribe the machine (set before any import
# reads it; a value the user exported is kept). A run without workers (`-n 0`) uses 2 threads.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 2)
                                                     // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = (ROOT / ".." / "shared" / "data").resolve()


def pytest_configure(config):
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        # glibc's malloc asks for transparent huge pages (read at start-up: the workers and every command
        # they run get it): a big tensor then faults in 2 MiB pages, not 4 KiB ones. Same results; the
        # suite's page faults fell from 17.6 M to 5.1 M and its system time from 66 s to 44 s.
        os.environ.setdefault("GLIBC_TUNABLES", "glibc.malloc.hugetlb=1")
        if not getattr(config.option, "numprocesses", None):
            os.environ.setdefault("OMP_NUM_THREADS", "2")


def pytest_collection_modifyitems(config, items):
    """Modules holding a test marked `heavy(seconds)` (the long end-to-end runs; seconds: their rough
    cost alone on 2 cores) go first, the costliest first, so that the workers start them while the
    many short tests fill the gaps. Each module's tests stay together, in their order, so that a
    module-scoped fixture is built once per worker."""
    first, cost = {}, {}
    for i, item in enumerate(items):
        mark = item.get_closest_marker("heavy")
        first.setdefault(item.module, i)
        cost[item.module] = max(cost.get(item.module, 0), mark.args[0] if mark and mark.args else 0)
    order = {item: i for i, item in enumerate(items)}
    items.sort(key=lambda item: (-cost[item.module], first[item.module], order[item]))


#: modules that one worker runs whole, because the module- or session-scoped fixtures only they use cost
#: a second or more (built once, not once per worker); every other test is scheduled on its own
ONE_WORKER_MODULES = {"test_bench_epipolar.py", "test_bench_hpatches.py", "test_bench_image_retrieval.py",
                      "test_bench_localization.py", "test_bench_tokyo.py", "test_compare.py", "test_hndesc_paper.py",
                      "test_hndesc_sp.py", "test_netvlad.py", "test_packaging.py", "test_training_trainer.py",
                      "test_val_curves.py"}


def pytest_xdist_make_scheduler(config, log):
    """pytest-xdist's scheduler by scope, a scope being one of ONE_WORKER_MODULES or a single test,
    in the order pytest_collection_modifyitems gives (xdist's own `xdist_group` marks need pytest < 9)."""
    from xdist.scheduler import LoadScopeScheduling

    class ModuleOrTest(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return path if Path(path).name in ONE_WORKER_MODULES else nodeid

    config.option.loadscopereorder = False
    return ModuleOrTest(config, log)


def hloc_available() -> bool:
    try:
        return importlib.util.find_spec("hloc") is not None and importlib.util.find_spec("hloc.extract_features") is not None
    except Exception:
        return False


requires_hloc = pytest.mark.skipif(
    not hloc_available(),
    reason="hloc is not installed (not on PyPI): clone cvg/Hierarchical-Localization and `pip install --no-deps -e` it")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"real test data not found at {SHARED} (the ../shared/data folder beside the repo)")
    return SHARED


@pytest.fixture(scope="session")
def sacre_coeur(shared_data) -> Path:
    return shared_data / "sacre_coeur" / "mapping"


@pytest.fixture(scope="session")
def val_pairs(shared_data):
    """The trainer's validation pairs (random homographies, 400 px) of two real photos."""
    from hndesc_features.training.validation import make_pairs

    photos = sorted((shared_data / "photos").glob("*.jpg"))
    if len(photos) < 2:
        pytest.skip("needs the real photos in ../shared/data/photos")
    return make_pairs({"source": {"name": "list", "paths": [str(p) for p in photos[:2]]}, "n_pairs": 2,
                       "resize": 400})


def skimage_photo(name: str) -> np.ndarray:
    """RGB uint8 photo shipped inside the scikit-image wheel."""
    import skimage.data

    path = Path(skimage.data.__file__).parent / name
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert img is not None, path
    return img[:, :, ::-1].copy()


@pytest.fixture
def two_photos(tmp_path) -> Path:
    """A folder with two real photos (skimage wheel), always available."""
    d = tmp_path / "imgs"
    d.mkdir()
    for n in ("motorcycle_left.png", "motorcycle_right.png"):
        cv2.imwrite(str(d / n.replace(".png", ".jpg")), skimage_photo(n)[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
    return d


#: this test process's warm interpreters (tests/warm_python.py), one per start-up environment the
#: commands asked for, each started on first use; at most MAX_WARM (a command beyond runs in a new one)
_WARM: dict = {}
MAX_WARM = 3


def _warm_python(env: dict):
    """The warm interpreter for a command's environment, or None when MAX_WARM are running already."""
    from warm_python import WarmPython, startup_key

    key = startup_key(env)
    warm = _WARM.get(key)
    if warm is None and len(_WARM) >= MAX_WARM:
        return None
    if warm is None or not warm.alive():
        warm = _WARM[key] = WarmPython(env)
    return warm


def pytest_unconfigure(config):
    for warm in _WARM.values():
        warm.close()


def run_py(args, env_extra=None, cwd=None, timeout=600, check=True):
    """`python ARGS` → CompletedProcess (text). A `-m` / `-c` command runs in a child forked from a warm
    interpreter that has torch imported (tests/warm_python.py) and was started with the same start-up
    environment (the variables interpreter start-up reads); other commands in a new interpreter."""
    from warm_python import runnable

    env = {**os.environ, **(env_extra or {})}
    cwd = cwd or ROOT.parent
    warm = _warm_python(env) if runnable(args, env) else None
    if warm is not None:
        p = warm.run(args, env, cwd, timeout)
    else:
        p = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, cwd=cwd,
                           timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"command failed ({p.returncode}): {args}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p


def run_main(main, argv, capsys) -> subprocess.CompletedProcess:
    """A CLI's `main(argv)` run in this process the way `python -m` runs it (SystemExit → return code;
    stdout / stderr from capsys), for error-path tests that need no fresh interpreter."""
    capsys.readouterr()
    try:
        rc = main(list(map(str, argv)))
    except SystemExit as e:
        rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(argv, rc if isinstance(rc, int) else 0, out, err)


def read_h5(path: Path) -> dict:
    import h5py

    out = {}
    with h5py.File(path, "r") as fd:
        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                out[name] = (obj[()], dict(obj.attrs))
        fd.visititems(visit)
    return out


def training_pairs(data_conf: dict, keys) -> list:
    """Pairs of the shared training sampler on the real dev photos (skip when they are absent)."""
    from hndesc_features.training.datasets import build_dataset
    from hndesc_features.training.datasets.dev_images import shared_data_dir

    if shared_data_dir() is None:
        pytest.skip("real training photos not found (../shared/data)")
    ds = build_dataset(data_conf, "train")
    return [ds[k] for k in keys]


@pytest.fixture
def server(tmp_path, monkeypatch):
    """A local HTTP server over tmp_path/www (proxies unset): (folder, base URL) for download tests."""
    import functools
    import http.server
    import threading

    for k in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "no_proxy", "NO_PROXY"):
        monkeypatch.delenv(k, raising=False)
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()  # release the listening socket (no ResourceWarning)
