"""Loading a one-shot run's model while its command line is still being read.

``localllm run`` spends some 100 ms in Python before it loads the model: importing typer and
the commands, resolving the profile, checking the header, planning the load. llama.cpp then
spends about as long building the vocabulary (the starter's 49k tokens and their merges), in
C, with the GIL released. Both can happen at once when the model is known before the
command line is parsed: the console script calls :func:`start` first, which looks up the
model the same command line loaded last time (``preload.json`` in the cache directory,
keyed by the command's ``--model`` and ``--profile`` and, when either is given, the working
folder) and starts loading it on a helper thread.

The guess is only ever a head start. The load itself still goes through the whole path
(profile, header checks, memory plan); :meth:`localllm.engine.Native` then :func:`claim`\\ s
the preloaded model only when it is the same file version (path, inode, size, mtime) loaded
with the same model parameters (GPU layers, mmap), and loads its own otherwise. A file
changed since, another model chosen by an edited profile, or a command that ends in an
error costs the helper's work on the other core and nothing else: the process waits for the
helper before it exits, so llama.cpp is never torn down mid-load.

Only a llama.cpp build without a GPU backend remembers anything, and never a load with RPC
workers, a verbose log or in an isolated child: a wrong guess must not take GPU memory or
reach out to a worker.
"""

from __future__ import annotations

import atexit
import json
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from localllm import backend, paths
from localllm.durable import file_identity, read_json_table, write_json_table

RECORD_VERSION = 1
MAX_KEYS = 8  # command lines remembered (the most recent)

# options of `run` that change what is loaded, or how, beyond what a record holds
_REFUSE = frozenset(
    [
        "-v",
        "--verbose",
        "--show-prompt",
        "--rpc",
        "--gpu-layers",
        "--draft-model",
        "-i",
        "--image",
        "--mmproj",
        "-h",
        "--help",
    ]
)
_VALUED = {"-m": "model", "--model": "model", "-p": "profile", "--profile": "profile"}


class _Preload:
    def __init__(self, path: str, identity: list[Any], params: dict[str, Any]):
        self.path = path
        self.identity = identity
        self.params = params
        self.model: Any = None
        self.thread: threading.Thread | None = None


_pending: _Preload | None = None  # started and not yet claimed
_started: list[threading.Thread] = []  # every helper, claimed or not: joined at exit
_key: str | None = None  # this process's command line, when start() could read it


def run_key(argv: Sequence[str], cwd: str | None = None) -> str | None:
    """The record key for a ``localllm run`` command line (``argv`` without the program),
    or None when it is not a run or names something a record cannot stand for."""
    if not argv or argv[0] != "run":
        return None
    chosen: dict[str, str] = {}
    args = list(argv[1:])
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg == "--":
            break
        name, eq, value = arg.partition("=")
        if name in _REFUSE:
            return None
        if name in _VALUED:
            if not eq:
                if i >= len(args):
                    return None
                value = args[i]
                i += 1
            chosen[_VALUED[name]] = value
        elif arg[:2] in ("-m", "-p") and len(arg) > 2 and not arg.startswith("--"):
            chosen[_VALUED[arg[:2]]] = arg[2:]  # -mMODEL, click's attached short form
    if os.environ.get("LOCALLLM_ISOLATE", "").strip() not in ("", "0"):
        return None
    where = (cwd or os.getcwd()) if chosen else None  # names may be relative paths
    return json.dumps([chosen.get("model"), chosen.get("profile"), where])


def _record_path() -> Path:
    return paths.cache_dir() / "preload.json"


def _read_record() -> dict[str, Any]:
    return read_json_table(_record_path(), RECORD_VERSION, "runs")


def start(argv: Sequence[str]) -> None:
    """Start loading the model this command line loaded last time, if it is a ``run`` that
    did load one and that file is unchanged. Called once, by the console script."""
    global _pending, _key
    if _key is not None or _pending is not None:
        return
    _key = run_key(argv)
    if _key is None:
        return
    entry = _read_record().get(_key)
    if not isinstance(entry, dict):
        return
    path, identity, params = entry.get("path"), entry.get("identity"), entry.get("params")
    if not isinstance(path, str) or not isinstance(params, dict):
        return
    if type(params.get("n_gpu_layers")) is not int or type(params.get("use_mmap")) is not bool:
        return
    current = file_identity(path)
    if current is None or list(current) != identity:
        return  # changed since it was checked: the header check comes first
    try:
        lib = backend.llama_lib()
    except Exception:
        return  # the load will say what is wrong
    pending = _Preload(path, identity, params)

    def load() -> None:
        try:
            with backend.quick_handoff():
                mp = _model_params(lib, params)
                model = lib.llama_model_load_from_file(os.fsencode(path), mp)
        except Exception:  # a head start only: the run's own load says what is wrong
            return
        pending.model = model or None

    backend.backend_init(lib)
    backend.route_llama_logs(False)
    pending.thread = threading.Thread(target=load, name="localllm-preload", daemon=True)
    _pending = pending
    _started.append(pending.thread)
    atexit.register(_finish)
    pending.thread.start()


def _model_params(lib: Any, params: dict[str, Any]) -> Any:
    mp = lib.llama_model_default_params()
    mp.n_gpu_layers = int(params["n_gpu_layers"])
    if hasattr(lib, "LLAMA_LOAD_MODE_MMAP"):
        mp.load_mode = lib.LLAMA_LOAD_MODE_MMAP if params["use_mmap"] else lib.LLAMA_LOAD_MODE_NONE
    else:  # pragma: no cover - older bindings
        mp.use_mmap = bool(params["use_mmap"])
    return mp


def _params_of(lib: Any, mp: Any) -> dict[str, Any] | None:
    """What a record keeps of llama.cpp model params ``mp``; None for loads it must not
    guess (vocabulary only, devices chosen)."""
    if mp.vocab_only or mp.devices:
        return None
    if hasattr(lib, "LLAMA_LOAD_MODE_MMAP"):
        use_mmap = mp.load_mode == lib.LLAMA_LOAD_MODE_MMAP
    else:  # pragma: no cover - older bindings
        use_mmap = bool(mp.use_mmap)
    return {"n_gpu_layers": int(mp.n_gpu_layers), "use_mmap": use_mmap}


def loading() -> bool:
    """Whether a preload is under way (or done) and not yet claimed."""
    return _pending is not None


def claim(lib: Any, path: Path, mp: Any) -> Any:
    """The preloaded model if it is ``path``'s current version loaded with params like
    ``mp``, else None (the caller loads its own)."""
    global _pending
    pending = _pending
    if pending is None:
        return None
    _pending = None
    wanted = _params_of(lib, mp)
    current = file_identity(path)
    if (
        wanted != pending.params
        or current is None
        or list(current) != pending.identity
        or current[0] != str(Path(pending.path).resolve())
    ):
        return None  # its model stays unused; the process ends soon after a run
    if pending.thread is not None:
        pending.thread.join()
    return pending.model


def remember(lib: Any, path: Path, mp: Any, verbose: bool) -> None:
    """Keep ``path`` and its model params as what this command line loads, for the next
    :func:`start` (only when this process is such a command line and the load is one a
    guess may repeat)."""
    if _key is None or verbose:
        return
    if backend.gpu_offload_supported():
        return  # a wrong guess would take GPU memory
    params = _params_of(lib, mp)
    identity = file_identity(path)
    if params is None or identity is None:
        return
    entry = {"path": identity[0], "identity": list(identity), "params": params}
    runs = _read_record()
    if runs.get(_key) == entry:
        return
    runs.pop(_key, None)
    runs[_key] = entry  # most recent last
    for old in list(runs)[:-MAX_KEYS]:
        del runs[old]
    write_json_table(_record_path(), RECORD_VERSION, "runs", runs)


def _finish() -> None:
    """At exit: wait for a load still running, so that llama.cpp is not torn down under it."""
    for thread in _started:
        thread.join()


def reset() -> None:
    """Forget this process's command line and any unclaimed preload (tests)."""
    global _pending, _key
    _finish()
    _started.clear()
    _pending = None
    _key = None
