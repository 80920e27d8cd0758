"""`python -m MODULE …` / `python -c CODE …` for the tests, without paying torch's import each time.

Most commands the tests run import torch, which costs about 2.5 s of CPU on its own. This module
is a warm interpreter: started on first use (``WarmPython``), it imports torch, numpy, OpenCV,
h5py and pycolmap (most hloc commands need the last two) and nothing else (no thread pool is
started before a fork; no module that binds sys.stdout / sys.stderr at import, as hloc's logger
does), then serves each command in a forked child. The child is set up as a fresh ``python``
would be: working directory, environment, ``sys.argv`` and ``sys.path[0]`` as Python sets them;
stdin from /dev/null, stdout / stderr to files; the module run by the same ``runpy`` entry point
``python -m`` uses; on exit, non-daemon threads joined, atexit handlers run, streams flushed, and
the exit status of SystemExit / an uncaught exception as Python gives it.

What a fork cannot redo is interpreter start-up: ``.pth`` hooks, ``-S`` / ``-X`` flags and the
variables read while torch loads. ``run_py`` (tests/conftest.py) therefore keeps one server per
start-up environment (``STARTUP_ENV``'s values: e.g. one with and one without the hloc hook), and
runs a fresh interpreter for a flag other than -m / -c. Under torchrun only the launcher is forked:
its workers are new interpreters started by the launcher.
"""
from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

#: variables read at interpreter start-up or while torch loads: a command that sets one differently
#: needs a server started with its values (PYTHONPATH is redone in the child: see `_pythonpath_ok`)
STARTUP_ENV = {"PYTHONHOME", "PYTHONSTARTUP", "PYTHONNOUSERSITE", "PYTHONSAFEPATH", "PYTHONWARNINGS",
               "PYTHONDONTWRITEBYTECODE", "PYTHONHASHSEED", "HNDESC_NO_HLOC_HOOK", "OMP_NUM_THREADS",
               "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "KMP_AFFINITY", "LD_PRELOAD", "LD_LIBRARY_PATH",
               "GLIBC_TUNABLES"}


#: what the server imports before serving: the imports every command pays for; none may start a thread
#: or bind sys.stdout / sys.stderr at import
SERVER_IMPORTS = ("cv2", "h5py", "numpy", "pycolmap", "torch")
#: the top-level packages the server holds before forking (a PYTHONPATH entry may not shadow them):
#: its own imports, and hndesc_features, which the hloc hook's start-up line imports
PRELOADED = (*SERVER_IMPORTS, "hndesc_features")


def _pythonpath_ok(env: dict) -> bool:
    """PYTHONPATH's entries go into the child's sys.path as start-up would put them, which is exact
    unless an entry holds another copy of a package the server already imported."""
    import importlib.util

    for entry in filter(None, env.get("PYTHONPATH", "").split(os.pathsep)):
        for name in PRELOADED:
            here = Path(entry) / name
            if here.exists() or here.with_suffix(".py").exists():
                spec = importlib.util.find_spec(name)
                if spec is None or not spec.submodule_search_locations or \
                        Path(list(spec.submodule_search_locations)[0]).resolve() != here.resolve():
                    return False
    return True


def startup_key(env: dict) -> tuple:
    """What a command's interpreter start-up reads from its environment: the server a command may use."""
    return tuple(env.get(k) for k in sorted(STARTUP_ENV))


def runnable(args, env: dict) -> bool:
    """A `-m` / `-c` command that a child of a server started with its start-up environment runs as a new
    interpreter would. torchrun (`-m torch.distributed.run`) is one: only its launcher runs in the child,
    and the launcher starts each worker as a new interpreter of its own."""
    if len(args) < 2 or args[0] not in ("-m", "-c"):
        return False
    return _pythonpath_ok(env)


class WarmPython:
    """Client side: one server process, started with ``env``'s start-up variables (the rest of its
    environment is this process's); ``run`` blocks until the command's child exits."""

    def __init__(self, env: dict | None = None):
        self.env = dict(os.environ)  # the server's start-up environment
        if env is not None:
            self.env = {k: v for k, v in self.env.items() if k not in STARTUP_ENV}
            self.env.update({k: env[k] for k in STARTUP_ENV if k in env})
        self.proc = subprocess.Popen([sys.executable, __file__], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     cwd=str(Path(__file__).parent), env=self.env)
        self._buf = b""

    def alive(self) -> bool:
        return self.proc.poll() is None

    def _reply(self, timeout):
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buf:
            ready, _, _ = select.select([fd], [], [], timeout)
            if not ready:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                raise RuntimeError("the warm interpreter exited")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def run(self, args, env: dict, cwd, timeout: float) -> subprocess.CompletedProcess:
        with tempfile.TemporaryDirectory(prefix="warm_python_") as tmp:
            out, err = Path(tmp) / "stdout", Path(tmp) / "stderr"
            self.proc.stdin.write((json.dumps({"args": list(map(str, args)), "env": env, "cwd": str(cwd),
                                               "stdout": str(out), "stderr": str(err)}) + "\n").encode())
            self.proc.stdin.flush()
            pid = self._reply(30)["pid"]
            done = self._reply(timeout)
            if done is None:
                os.kill(pid, signal.SIGKILL)
                self._reply(30)
                raise subprocess.TimeoutExpired([sys.executable, *args], timeout, out.read_text(errors="replace"),
                                                err.read_text(errors="replace"))
            return subprocess.CompletedProcess([sys.executable, *args], done["returncode"],
                                               out.read_text(errors="replace"), err.read_text(errors="replace"))

    def close(self):
        self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()


def _child(req: dict) -> None:
    """In the forked child: become `python ARGS` and never return."""
    import atexit
    import runpy
    import threading
    import traceback
    import types

    code = 0
    try:
        server_pythonpath = os.environ.get("PYTHONPATH", "")
        os.chdir(req["cwd"])
        os.environ.clear()
        os.environ.update(req["env"])
        for fd, path, flags in ((0, os.devnull, os.O_RDONLY), (1, req["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
                                (2, req["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)):
            new = os.open(path, flags, 0o644)
            os.dup2(new, fd)
            os.close(new)
        sys.stdin = open(0, closefd=False)
        sys.stdout = open(1, "w", closefd=False)
        sys.stderr = open(2, "w", buffering=1, closefd=False)
        sys.__stdin__, sys.__stdout__, sys.__stderr__ = sys.stdin, sys.stdout, sys.stderr
        signal.signal(signal.SIGINT, signal.default_int_handler)
        # PYTHONPATH as start-up reads it: its entries right after sys.path[0]
        old = [os.path.abspath(p) for p in server_pythonpath.split(os.pathsep) if p]
        sys.path[1:] = [p for p in sys.path[1:] if p not in old]
        sys.path[1:1] = [os.path.abspath(p) for p in req["env"].get("PYTHONPATH", "").split(os.pathsep) if p]
        flag, target, *rest = req["args"]
        main = types.ModuleType("__main__")  # a fresh, empty __main__ as `python` starts with
        sys.modules["__main__"] = main
        if flag == "-m":
            sys.path[0] = os.getcwd()
            sys.argv = ["-m", *rest]
            runpy._run_module_as_main(target, alter_argv=True)  # what `python -m` calls
        else:
            sys.path[0] = ""
            sys.argv = ["-c", *rest]
            exec(compile(target, "<string>", "exec"), main.__dict__)
    except SystemExit as e:
        if e.code is None:
            code = 0
        elif isinstance(e.code, int):
            code = e.code
        else:
            print(e.code, file=sys.stderr)
            code = 1
    except BaseException:
        traceback.print_exc()
        code = 1
    try:
        threading._shutdown()
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:
        traceback.print_exc()
        code = code or 1
    os._exit(code & 0xFF)


def serve() -> None:
    import gc
    import importlib

    for name in SERVER_IMPORTS:
        importlib.import_module(name)
    # the imported modules' objects out of the collector's reach: a child's collections then leave their
    # pages shared with the server instead of copying them (12,500 page faults, ~0.2 s CPU, per child)
    gc.freeze()

    for line in sys.stdin:
        req = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            try:
                _child(req)
            finally:
                os._exit(1)
        print(json.dumps({"pid": pid}), flush=True)
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}), flush=True)


if __name__ == "__main__":
    serve()
