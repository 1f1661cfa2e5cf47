"""Splitting a model across machines with llama.cpp's RPC backend.

Workers (``localllm worker``: llama.cpp's ``ggml-rpc-server``) are registered with ggml's
backend registry before a model loads, as llama.cpp's ``common/arg.cpp`` does:
``ggml_backend_reg_by_name("RPC")``, its ``ggml_backend_rpc_add_server`` per ``HOST:PORT``,
``ggml_backend_register`` of the result. Their devices then count as offload devices (type GPU),
so ``n_gpu_layers`` decides how many layers leave this machine and llama.cpp splits them over
every device by free memory.

This module calls libggml through ctypes, so it sits in the engine layer (it needs the library
the bindings loaded). The PyPI wheel has RPC off: when the bindings are not loaded yet and a
localllm-built RPC library for this exact llama-cpp-python version exists
(:mod:`localllm.rpcbuild`), ``LLAMA_CPP_LIB_PATH`` is pointed at it first.

Every worker is probed over the wire (:mod:`localllm.rpcwire`) before llama.cpp sees it:
llama.cpp aborts the process on a refused connection or a version mismatch, and waits forever
on a worker that is busy with another client.
"""

from __future__ import annotations

import ctypes
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from localllm.errors import InferenceError, UsageError
from localllm.rpcwire import WorkerInfo

_registered: dict[str, WorkerInfo] = {}


def _package_lib_dir() -> Path | None:
    import importlib.util

    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "lib"


def lib_dir() -> Path | None:
    """The directory the bindings load (or loaded) libllama from."""
    override = os.environ.get("LLAMA_CPP_LIB_PATH")
    return Path(override) if override else _package_lib_dir()


def _has_rpc_files(path: Path | None) -> bool:
    if path is None:
        return False
    from localllm.rpcbuild import _shared_lib

    return (path / _shared_lib("ggml-rpc")).is_file()


def _bindings_loaded() -> bool:
    return "llama_cpp.llama_cpp" in sys.modules


def no_rpc_error(detail: str = "") -> UsageError:
    from localllm.rpcbuild import REINSTALL

    return UsageError(
        "this llama.cpp build has no RPC backend" + (f" ({detail})" if detail else ""),
        hint="build one with `localllm worker --build`, or reinstall: " + REINSTALL,
    )


def select_rpc_library() -> Path:
    """Make sure the bindings load an RPC-enabled libllama; return its directory.

    The installed (or ``LLAMA_CPP_LIB_PATH``) library is used when it has RPC; otherwise a
    localllm build for this version, when the bindings have not loaded yet. Anything else is a
    :class:`UsageError` (exit 2) naming both fixes."""
    current = lib_dir()
    if _has_rpc_files(current):
        return current  # type: ignore[return-value]
    if os.environ.get("LLAMA_CPP_LIB_PATH"):  # the user's explicit choice: never replaced
        raise no_rpc_error(f"LLAMA_CPP_LIB_PATH={current} has no ggml-rpc library")
    from localllm import rpcbuild

    found = rpcbuild.find_build()
    if found is None:
        raise no_rpc_error()
    if _bindings_loaded():
        if current is not None and current.resolve() == found.lib_dir.resolve():
            return current
        raise no_rpc_error(
            f"the bindings already loaded {current}; the RPC build is {found.lib_dir}: "
            f"run with LLAMA_CPP_LIB_PATH={found.lib_dir}"
        )
    os.environ["LLAMA_CPP_LIB_PATH"] = str(found.lib_dir)
    os.environ.setdefault("MTMD_CPP_LIB", str(found.lib_dir))
    return found.lib_dir


def expected_protocol() -> str | None:
    """The RPC protocol of the library in use, when a localllm build describes it."""
    import json

    path = lib_dir()
    if path is None:
        return None
    from localllm.rpcbuild import INFO_FILE

    try:
        info = json.loads((path.parent / INFO_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    proto = info.get("rpc_protocol")
    return proto if isinstance(proto, str) and proto != "?" else None


def _rpc_reg(ggml: Any) -> Any:
    fn = ggml.ggml_backend_reg_by_name
    fn.argtypes, fn.restype = [ctypes.c_char_p], ctypes.c_void_p
    return fn(b"RPC")


def build_has_rpc() -> bool:
    """Whether the loaded llama.cpp build has the RPC backend (loads the bindings)."""
    from localllm import backend

    return bool(_rpc_reg(backend.ggml_lib()))


def attach(endpoints: Sequence[str], *, timeout: float = 5.0) -> list[WorkerInfo]:
    """Register ``endpoints`` as offload devices (once per process each) and return what each
    worker reported. A worker that is down, busy or of another version raises
    :class:`InferenceError` naming it, before llama.cpp could abort on it."""
    from localllm import backend, rpcwire

    if not endpoints:
        return []
    select_rpc_library()
    ggml = backend.ggml_lib()
    reg = _rpc_reg(ggml)
    if not reg:
        raise no_rpc_error(f"{lib_dir()} lacks it")
    expect = expected_protocol()
    infos = []
    for endpoint in endpoints:
        if endpoint in _registered:
            # registered earlier in this process, which may hold its connection: only check
            # that it still listens (llama.cpp aborts when a reconnect fails)
            info = rpcwire.listening(endpoint, timeout=timeout)
        else:
            info = rpcwire.probe(endpoint, timeout=timeout, expect=expect)
        if info.problem:
            host_port = endpoint.rpartition(":")
            raise InferenceError(
                f"RPC worker {endpoint} "
                + ("is not reachable: " if not info.reachable else "cannot be used: ")
                + info.problem,
                hint=f"start it on that host: `localllm worker --port {host_port[2]}`, with the "
                "same llama-cpp-python version; or leave it out of --rpc",
            )
        infos.append(_registered.get(endpoint, info))
    # every worker answered: only now is llama.cpp allowed to connect
    get_proc = ggml.ggml_backend_reg_get_proc_address
    get_proc.argtypes, get_proc.restype = [ctypes.c_void_p, ctypes.c_char_p], ctypes.c_void_p
    address = get_proc(reg, b"ggml_backend_rpc_add_server")
    if not address:
        raise no_rpc_error("no ggml_backend_rpc_add_server")
    add_server = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_char_p)(address)
    register = ggml.ggml_backend_register
    register.argtypes, register.restype = [ctypes.c_void_p], None
    for endpoint, info in zip(endpoints, infos, strict=True):
        if endpoint in _registered:
            continue
        server = add_server(endpoint.encode("utf-8"))
        if not server:
            raise InferenceError(f"RPC worker {endpoint} reported no devices")
        register(server)
        _registered[endpoint] = info
    return infos


def registered() -> dict[str, WorkerInfo]:
    """The workers registered in this process, by endpoint."""
    return dict(_registered)


# -- the split, as llama.cpp logged it -------------------------------------------------------

_ASSIGNED = re.compile(r"layer\s+(\d+) assigned to device (\S+?),")
_BUFFER = re.compile(r"^\S+:\s+(\S+?)(?:_Mapped)? model buffer size =\s+([\d.]+) MiB")
_RPC_DEV = re.compile(r"^RPC(\d+)\[(.+)\]$")


@dataclass(frozen=True)
class DeviceShare:
    """One device's part of a loaded model."""

    device: str  # CPU, CUDA0, RPC0, ...
    endpoint: str  # the worker's HOST:PORT for RPC devices, "" for local ones
    layers: int
    mib: float  # model weights on it

    @property
    def label(self) -> str:
        where = self.endpoint or self.device
        return f"{where} {self.layers} layers {self.mib:.0f} MiB"


def parse_split(lines: Sequence[str], endpoints: dict[str, str] | None = None) -> list[DeviceShare]:
    """Layers and weight MiB per device from llama.cpp's load log (``layer N assigned to
    device X`` and ``X model buffer size``). Layers name the global device (``RPC1``), buffers
    the worker (``RPC0[host:port]``, its device 0): ``endpoints`` maps device names to
    ``HOST:PORT`` (from the device list) so both meet."""
    by_endpoint = {v: k for k, v in (endpoints or {}).items()}
    layers: dict[str, int] = {}
    buffers: dict[str, float] = {}
    for text in "".join(lines).splitlines():
        m = _ASSIGNED.search(text)
        if m:
            layers[m.group(2)] = layers.get(m.group(2), 0) + 1
            continue
        m = _BUFFER.match(text.strip())
        if m:
            name = m.group(1)
            if name.startswith("CPU_"):  # CPU_REPACK: weights repacked for the CPU kernels
                name = "CPU"
            rpc = _RPC_DEV.match(name)
            if rpc:
                name = by_endpoint.get(rpc.group(2), name)
            buffers[name] = buffers.get(name, 0.0) + float(m.group(2))
    names = list(dict.fromkeys([*layers, *buffers]))
    order = sorted(names, key=lambda n: (n.startswith("RPC"), n))
    return [
        DeviceShare(n, (endpoints or {}).get(n, ""), layers.get(n, 0), buffers.get(n, 0.0))
        for n in order
    ]


def engine_split(engine: Any) -> list[DeviceShare]:
    """The split of a loaded engine (empty when it was not loaded with workers)."""
    lines = getattr(engine, "load_log", None)
    if not lines:
        return []
    names = getattr(engine, "rpc_devices", None)  # a model in a child process brings its own
    return parse_split(lines, names if names is not None else rpc_device_names())


def rpc_device_names() -> dict[str, str]:
    """This process's registered RPC devices: llama.cpp's name (``RPC0``) -> ``host:port``."""
    from localllm import backend

    return {d.name: d.description for d in backend.devices() if d.backend == "RPC"}


def split_summary(shares: Sequence[DeviceShare]) -> str:
    """``split: CPU 11 layers 40 MiB · 127.0.0.1:50052 10 layers 30 MiB · ...``"""
    return "split: " + " · ".join(s.label for s in shares) if shares else ""


def short_split(shares: Sequence[DeviceShare]) -> str:
    """The status bar's form: ``split 11+10+10`` (layers per device, local ones first)."""
    devices = [s for s in shares if "[" not in s.device]  # buffers not matched to a device
    if not any(s.device.startswith("RPC") for s in devices):
        return ""
    return "split " + "+".join(str(s.layers) for s in devices)


def status_label(engine: Any) -> str:
    """The status bar's split label for a loaded engine ("" when not split or unknown); reads
    only the engine's load log, never the workers."""
    lines = getattr(engine, "load_log", None)
    return short_split(parse_split(lines)) if isinstance(lines, list) and lines else ""
