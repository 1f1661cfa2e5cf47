"""llama.cpp's shared library and what it reports about itself.

Loading the C API bindings lazily (without running llama-cpp-python's package ``__init__``),
initializing the backend once, routing llama.cpp's log, and asking the build what it can run
on: its versions, the ggml backends compiled in, the devices with their memory, the CPU
features of its system info, and which GPU backend (if any) a model would be offloaded to.

Not for models or contexts: loading a model, its context and the token loop are
:mod:`localllm.engine`; this module only holds process-wide state of the library.
"""

from __future__ import annotations

import contextlib
import ctypes
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

# -- llama.cpp's C API, loaded lazily ------------------------------------------------------

_LIB: Any = None
_LIB_LOCK = threading.Lock()
_backend_ready = False


def llama_lib() -> Any:
    """llama.cpp's C API: the ``llama_cpp.llama_cpp`` bindings, without the rest of the package.

    ``import llama_cpp`` runs the package's ``__init__``, which imports the high-level ``Llama``
    class with its chat formats (jinja2), numpy and more: about 0.2 s that the engine never
    uses. When nothing has imported the package yet, it is registered unexecuted (its path
    only), the low-level module is imported into it and its names copied over; the first
    access to any other name (``llama_cpp.Llama``, ``__version__``) runs the real ``__init__``
    then, so other code sees the complete package.
    """
    if _LIB is not None:
        return _LIB
    with _LIB_LOCK:  # a TUI worker and the main thread may both get here first
        return _load_lib()


def _load_lib() -> Any:
    global _LIB
    if _LIB is not None:
        return _LIB
    import importlib
    import sys

    if "llama_cpp" not in sys.modules:
        import importlib.util

        spec = importlib.util.find_spec("llama_cpp")
        if spec is not None and spec.loader is not None and spec.submodule_search_locations:
            pkg = importlib.util.module_from_spec(spec)
            state = {"done": False}

            def complete(name: str) -> Any:
                if state["done"] or (name.startswith("__") and name != "__version__"):
                    raise AttributeError(name)
                state["done"] = True
                spec.loader.exec_module(pkg)  # type: ignore[union-attr]
                # the package's own logger installs its log callback on import: ours stays
                if log_route["callback"] is not None:
                    low.llama_log_set(log_route["callback"], ctypes.c_void_p(0))
                return getattr(pkg, name)

            pkg.__getattr__ = complete  # type: ignore[attr-defined]
            sys.modules["llama_cpp"] = pkg
            try:
                low = importlib.import_module("llama_cpp.llama_cpp")
            except BaseException:
                sys.modules.pop("llama_cpp", None)
                raise
            for name, value in vars(low).items():
                if not name.startswith("_"):
                    setattr(pkg, name, value)
            _LIB = low
            return low
    _LIB = importlib.import_module("llama_cpp.llama_cpp")
    return _LIB


def backend_init(lib: Any) -> None:
    global _backend_ready
    if not _backend_ready:
        lib.llama_backend_init()
        _backend_ready = True


_gpu_offload: bool | None = None


def gpu_offload_supported() -> bool:
    """Whether this llama.cpp build has a GPU backend (CUDA, Metal, Vulkan, ...); asked of the
    C API once per process."""
    global _gpu_offload
    if _gpu_offload is None:
        _gpu_offload = bool(llama_lib().llama_supports_gpu_offload())
    return _gpu_offload


# -- backends and devices ------------------------------------------------------------------
#
# What this llama.cpp build can run on: its version, the backends compiled in, the devices with
# their memory, the CPU features from llama.cpp's system info. ggml's backend device API is not
# bound by llama_cpp, so it is called through ctypes on the same libggml llama_cpp loaded.

# CPU flags in the system info that are build options, not instruction sets.
_BUILD_FLAGS = frozenset({"LLAMAFILE", "OPENMP", "REPACK", "KLEIDIAI", "ACCELERATE", "BLAS"})
_DEVICE_TYPES = {0: "cpu", 1: "gpu", 2: "igpu", 3: "accel", 4: "meta"}
_GPU_LABELS = (
    ("CUDA", "CUDA"),
    ("HIP", "ROCm"),
    ("ROCm", "ROCm"),
    ("MTL", "Metal"),
    ("Metal", "Metal"),
    ("Vulkan", "Vulkan"),
    ("SYCL", "SYCL"),
    ("OpenCL", "OpenCL"),
    ("CANN", "CANN"),
    ("MUSA", "MUSA"),
    ("RPC", "RPC"),
)


@dataclass(frozen=True)
class Device:
    """One ggml backend device: ``CPU``, ``CUDA0``, ``Metal``, ``Vulkan0``, ..."""

    name: str
    description: str
    kind: str  # cpu | gpu | igpu | accel | meta
    backend: str  # the registry it belongs to: CPU, CUDA, Metal, ...
    free: int  # bytes
    total: int  # bytes

    @property
    def is_gpu(self) -> bool:
        return self.kind in ("gpu", "igpu")

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "type": self.kind,
            "backend": self.backend,
            "free_bytes": self.free,
            "total_bytes": self.total,
        }


class flash_attn_mode:
    """Load with llama.cpp's own ``auto`` flash attention when ``flash_attn`` is None, for code
    that loads through llama-cpp-python's ``Llama`` (the embeddings engine);
    :class:`~localllm.engine.Engine` sets the context parameter itself.

    llama-cpp-python maps its boolean ``flash_attn`` to ENABLED or DISABLED only; while a model
    loads with ``flash_attn=None`` its DISABLED constant reads AUTO, so llama.cpp probes the
    device (and turns flash attention on where the backend supports it). A lock keeps two
    loads from interleaving; any other value leaves the library untouched.
    """

    _lock = threading.Lock()

    def __init__(self, flash_attn: bool | None) -> None:
        self.auto = flash_attn is None
        self._saved: int | None = None

    def __enter__(self) -> None:
        if not self.auto:
            return
        import llama_cpp.llama_cpp as lib

        self._lock.acquire()
        self._saved = lib.LLAMA_FLASH_ATTN_TYPE_DISABLED
        lib.LLAMA_FLASH_ATTN_TYPE_DISABLED = lib.LLAMA_FLASH_ATTN_TYPE_AUTO

    def __exit__(self, *exc: object) -> None:
        if not self.auto:
            return
        import llama_cpp.llama_cpp as lib

        lib.LLAMA_FLASH_ATTN_TYPE_DISABLED = self._saved
        self._lock.release()


log_route: dict[str, Any] = {"verbose": False, "callback": None}


_handoff_lock = threading.Lock()
_handoff_users = 0
_handoff_saved = 0.0
HANDOFF_INTERVAL = 0.0005  # seconds; Python's default switch interval is 0.005


@contextlib.contextmanager
def quick_handoff(active: bool = True) -> Iterator[None]:
    """A short GIL switch interval while ``active``: Python code runs beside a model load.

    llama.cpp logs some 1,200 lines while it loads a model, and each one calls our log
    callback, which needs the GIL. With a Python thread holding it, every call waits up to
    the switch interval (5 ms): the load of the starter model took 165 ms instead of 118 ms
    beside a busy thread, and 100 ms at 0.5 ms. Measured on a one-shot run, open_engine to the
    first decode: 194 -> 180 ms (medians of 24). Nested and concurrent loads share it; the
    last one out restores the interval.
    """
    global _handoff_users, _handoff_saved
    if not active:
        yield
        return
    with _handoff_lock:
        if _handoff_users == 0:
            _handoff_saved = sys.getswitchinterval()
            sys.setswitchinterval(HANDOFF_INTERVAL)
        _handoff_users += 1
    try:
        yield
    finally:
        with _handoff_lock:
            _handoff_users -= 1
            if _handoff_users == 0:
                sys.setswitchinterval(_handoff_saved)


def route_llama_logs(verbose: bool) -> None:
    """Show llama.cpp's log only when ``verbose``.

    llama-cpp-python filters the log by ggml's old level numbers; ggml has since renumbered
    them (WARN is now 3, which it reads as ERROR), so warnings such as "n_ctx_seq > n_ctx_train"
    reached stderr with verbose off, in the middle of ``run`` and ``tokenize`` output. The
    engine installs its own callback once (the last loaded engine's setting applies); failures
    still surface as localllm errors.
    """
    import sys

    lib = llama_lib()
    log_route["verbose"] = verbose
    if log_route["callback"] is not None:
        return

    @lib.llama_log_callback  # type: ignore[misc]
    def callback(level: int, text: bytes, user_data: Any) -> None:
        capture = log_route.get("capture")
        if capture is not None and text:
            capture.append(text.decode("utf-8", errors="replace"))
        if log_route["verbose"] and text:
            sys.stderr.write(text.decode("utf-8", errors="replace"))
            sys.stderr.flush()

    log_route["callback"] = callback  # keep it alive: llama.cpp holds a raw pointer
    lib.llama_log_set(callback, ctypes.c_void_p(0))


class capture_llama_log:
    """Collects llama.cpp's log lines while open (e.g. why a grammar did not parse)."""

    def __enter__(self) -> list[str]:
        self._saved = log_route.get("capture")
        lines: list[str] = []
        log_route["capture"] = lines
        return lines

    def __exit__(self, *exc: object) -> None:
        log_route["capture"] = self._saved


_GGML: Any = None


def ggml_lib() -> Any:
    """libggml with the backend registry functions typed (the library llama_cpp loaded)."""
    global _GGML
    if _GGML is not None:
        return _GGML
    llama_lib()  # loads libllama and libggml first
    import os

    override = os.environ.get("LLAMA_CPP_LIB_PATH")  # llama_cpp._ggml ignores it
    if override:
        from localllm.rpcbuild import _shared_lib

        lib = ctypes.CDLL(os.path.join(override, _shared_lib("ggml")))
    else:
        from llama_cpp import _ggml as ggml_mod

        lib = ctypes.CDLL(ggml_mod.libggml._name)
    vp, sz, cp = ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p
    for name, args, res in (
        ("ggml_backend_reg_count", [], sz),
        ("ggml_backend_reg_get", [sz], vp),
        ("ggml_backend_reg_name", [vp], cp),
        ("ggml_backend_dev_count", [], sz),
        ("ggml_backend_dev_get", [sz], vp),
        ("ggml_backend_dev_name", [vp], cp),
        ("ggml_backend_dev_description", [vp], cp),
        ("ggml_backend_dev_memory", [vp, ctypes.POINTER(sz), ctypes.POINTER(sz)], None),
        ("ggml_backend_dev_type", [vp], ctypes.c_int),
        ("ggml_backend_dev_backend_reg", [vp], vp),
        ("ggml_version", [], cp),
        ("ggml_commit", [], cp),
    ):
        fn = getattr(lib, name, None)
        if fn is not None:
            fn.argtypes, fn.restype = args, res
    _GGML = lib
    return lib


def _text(raw: bytes | None) -> str:
    return raw.decode("utf-8", errors="replace") if raw else ""


def system_info() -> str:
    """llama.cpp's system info line (``CPU : SSE3 = 1 | AVX2 = 1 | ...``)."""
    return _text(llama_lib().llama_print_system_info()).strip()


def parse_system_info(info: str) -> dict[str, dict[str, str]]:
    """``"CPU : AVX2 = 1 | F16C = 1 | CUDA : ARCHS = 900 |"`` → per backend, its flags."""
    sections: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for part in info.split("|"):
        part = part.strip()
        if not part:
            continue
        if " : " in part:
            section, _, part = part.partition(" : ")
            current = sections.setdefault(section.strip(), {})
        if current is None:
            current = sections.setdefault("", {})
        key, sep, value = part.partition("=")
        current[key.strip()] = value.strip() if sep else ""
    return sections


def simd_features(info: str | None = None) -> list[str]:
    """The CPU instruction sets llama.cpp was built to use (AVX2, AVX512, NEON, ...), from its
    system info; flags set to 0 and build options (OPENMP, LLAMAFILE, ...) are left out."""
    sections = parse_system_info(system_info() if info is None else info)
    cpu = sections.get("CPU", {})
    return [k for k, v in cpu.items() if v == "1" and k not in _BUILD_FLAGS]


def llama_cpp_versions() -> dict[str, str]:
    """llama-cpp-python's version and the ggml (llama.cpp) version and commit it was built
    from."""
    from importlib import metadata

    lib = ggml_lib()
    try:
        version = metadata.version("llama-cpp-python")
    except metadata.PackageNotFoundError:  # pragma: no cover - a source checkout on the path
        version = "unknown"
    out = {"llama_cpp_python": version}
    for key, fn in (("ggml", "ggml_version"), ("ggml_commit", "ggml_commit")):
        f = getattr(lib, fn, None)
        out[key] = _text(f()) if f is not None else "unknown"
    return out


def backends() -> list[str]:
    """Names of the backends compiled into (or loaded by) this build: ``CPU``, ``CUDA``, ..."""
    lib = ggml_lib()
    return [
        _text(lib.ggml_backend_reg_name(lib.ggml_backend_reg_get(i)))
        for i in range(lib.ggml_backend_reg_count())
    ]


def devices() -> list[Device]:
    """Every backend device with its free and total memory (a GPU's own memory; for the CPU,
    system RAM). Asking a CUDA device its memory initializes the driver."""
    import ctypes

    lib = ggml_lib()
    found = []
    for i in range(lib.ggml_backend_dev_count()):
        dev = lib.ggml_backend_dev_get(i)
        free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
        lib.ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
        reg = lib.ggml_backend_dev_backend_reg(dev)
        found.append(
            Device(
                name=_text(lib.ggml_backend_dev_name(dev)),
                description=_text(lib.ggml_backend_dev_description(dev)),
                kind=_DEVICE_TYPES.get(lib.ggml_backend_dev_type(dev), "unknown"),
                backend=_text(lib.ggml_backend_reg_name(reg)) if reg else "",
                free=int(free.value),
                total=int(total.value),
            )
        )
    return found


def gpu_free_memory() -> int | None:
    """Free bytes over every GPU device (None when there is none); what ``gpu_layers: auto``
    fits layers into."""
    if not gpu_offload_supported():
        return None
    gpus = [d for d in devices() if d.is_gpu]
    return sum(d.free for d in gpus) if gpus else None


def install_fit_probe() -> None:
    """Let :mod:`localllm.fit` (``pull --list``, ``search``) judge fit against the free GPU
    memory llama.cpp reports, not RAM alone. Costs the llama_cpp import (and, on CUDA, the
    driver's start), so a command calls it only when it shows fit marks."""
    from localllm import fit

    def probe() -> tuple[int, str] | None:
        free = gpu_free_memory()
        return None if free is None else (free, gpu_backend_name())

    fit.set_gpu_probe(probe)


def gpu_backend_name() -> str:
    """The GPU backend of this build (``CUDA``, ``Metal``, ``Vulkan``, ...), ``CPU`` if none."""
    if not gpu_offload_supported():
        return "CPU"
    compiled = backends()
    names = [b for b in compiled if b.upper() not in ("CPU", "BLAS", "RPC")]
    for name in names:
        for key, label in _GPU_LABELS:
            if key.lower() in name.lower():
                return label
    if names:
        return names[0]
    if "RPC" in compiled:  # llama_supports_gpu_offload() is true for RPC builds alone
        return "RPC"
    import sys

    return "Metal" if sys.platform == "darwin" else "GPU"


def backend_name(n_gpu_layers: int | None = None) -> str:
    """``CPU``, ``CUDA``, ``Metal``, ``Vulkan``, ``ROCm``, ...: where a model loaded with
    ``n_gpu_layers`` runs (``CPU`` when nothing is offloaded or this build has no GPU).
    (Kept for the TUI status bar; :attr:`~localllm.engine.LoadOptions.backend` says the same
    for a plan.)"""
    if n_gpu_layers == 0:
        return "CPU"
    return gpu_backend_name()
