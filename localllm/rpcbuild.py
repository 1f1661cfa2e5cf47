"""Building llama.cpp with its RPC backend from the exact sources of the installed
llama-cpp-python, into a cache outside any repository.

The PyPI wheel of llama-cpp-python is built with RPC off and never ships the worker binary.
One CMake build of the llama.cpp vendored in its sdist (the same version, so the client and
every worker speak the same protocol) gives both: ``ggml-rpc-server`` (the worker) and shared
libraries with RPC on (``libllama``, ``libggml*``, ``libmtmd``) that the bindings load through
``LLAMA_CPP_LIB_PATH``. Everything lands in ``<cache>/build-<version>-<tag>/bin`` with a
``localllm-rpc.json`` describing it; the cache is ``LOCALLLM_RPC_CACHE`` or the user data
dir's ``rpc/``.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from localllm.errors import LocalLLMError, NetworkError, UsageError

INFO_FILE = "localllm-rpc.json"
WORKER_NAMES = ("ggml-rpc-server", "rpc-server")  # the target was renamed; older trees
REINSTALL = (
    'CMAKE_ARGS="-DGGML_RPC=on" pip install --force-reinstall --no-cache-dir llama-cpp-python'
)

# Backend tags for CMAKE_ARGS: the first one whose flag is on names the build.
_TAGS = (
    ("GGML_CUDA", "cuda"),
    ("GGML_HIP", "rocm"),
    ("GGML_VULKAN", "vulkan"),
    ("GGML_METAL", "metal"),
    ("GGML_SYCL", "sycl"),
)


def _shared_lib(name: str) -> str:
    if sys.platform == "win32":
        return f"{name}.dll"
    if sys.platform == "darwin":
        return f"lib{name}.dylib"
    return f"lib{name}.so"


def installed_version() -> str:
    """The installed llama-cpp-python's version (read from its metadata; nothing loaded)."""
    from importlib import metadata

    try:
        return metadata.version("llama-cpp-python")
    except metadata.PackageNotFoundError:
        raise UsageError(
            "llama-cpp-python is not installed", hint="pip install llama-cpp-python"
        ) from None


def cache_root() -> Path:
    """Where RPC builds live: ``LOCALLLM_RPC_CACHE``, else ``<user data dir>/rpc``."""
    value = os.environ.get("LOCALLLM_RPC_CACHE")
    if value:
        return Path(value).expanduser()
    from localllm import paths

    return paths.data_dir() / "rpc"


def backend_tag(cmake_args: str | None = None) -> str:
    """``cpu``, ``cuda``, ``vulkan``, ... from the CMake flags of a build."""
    args = cmake_args if cmake_args is not None else os.environ.get("CMAKE_ARGS", "")
    for flag, tag in _TAGS:
        if re.search(rf"-D{flag}=(on|1|true|yes)\b", args, re.IGNORECASE):
            return tag
    return "cpu"


@dataclass(frozen=True)
class RpcBuild:
    """A finished build: the worker binary and the RPC-enabled libraries beside it."""

    root: Path  # the CMake build dir
    version: str  # llama-cpp-python version whose vendored llama.cpp it was built from
    tag: str
    info: dict[str, Any]

    @property
    def lib_dir(self) -> Path:
        return self.root / "bin"

    @property
    def worker(self) -> Path:
        for name in WORKER_NAMES:
            path = self.lib_dir / (name + (".exe" if sys.platform == "win32" else ""))
            if path.is_file():
                return path
        return self.lib_dir / WORKER_NAMES[0]

    @property
    def label(self) -> str:
        """What ``localllm worker`` and ``doctor`` print to compare hosts."""
        ggml = self.info.get("ggml_version", "?")
        commit = self.info.get("ggml_commit", "?")
        proto = self.info.get("rpc_protocol", "?")
        return (
            f"llama-cpp-python {self.version} (ggml {ggml}, commit {commit}), "
            f"RPC protocol {proto}, {self.tag}"
        )


def build_dir(version: str, tag: str, root: Path | None = None) -> Path:
    return (root or cache_root()) / f"build-{version}-{tag}"


def is_complete(path: Path) -> bool:
    lib = path / "bin"
    return (
        (path / INFO_FILE).is_file()
        and (lib / _shared_lib("llama")).is_file()
        and (lib / _shared_lib("ggml-rpc")).is_file()
        and any((lib / n).is_file() for n in WORKER_NAMES)
    )


def find_build(version: str | None = None, tag: str | None = None) -> RpcBuild | None:
    """The finished build for ``version`` (default: the installed one), or None. Without a
    ``tag`` (``LOCALLLM_RPC_TAG`` or any), a GPU build is preferred over the CPU one."""
    version = version or installed_version()
    tag = tag or os.environ.get("LOCALLLM_RPC_TAG") or None
    root = cache_root()
    if tag:
        candidates = [build_dir(version, tag, root)]
    else:
        candidates = sorted(root.glob(f"build-{version}-*"), key=lambda p: p.name.endswith("-cpu"))
    for path in candidates:
        if is_complete(path):
            try:
                info = json.loads((path / INFO_FILE).read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            return RpcBuild(path, version, str(info.get("tag", tag or "cpu")), info)
    return None


def _sources(version: str, root: Path, say: Callable[[str], None]) -> Path:
    """The llama.cpp tree vendored in the llama-cpp-python ``version`` sdist (fetched once)."""
    src = root / f"llama_cpp_python-{version}"
    vendored = src / "vendor" / "llama.cpp"
    if (vendored / "CMakeLists.txt").is_file():
        return vendored
    # the bench build's unpacked sources, if that cache has them
    bench = Path.home() / ".cache" / "localllm-bench" / f"llama_cpp_python-{version}"
    if (bench / "vendor" / "llama.cpp" / "CMakeLists.txt").is_file():
        return bench / "vendor" / "llama.cpp"
    root.mkdir(parents=True, exist_ok=True)
    sdist = root / f"llama_cpp_python-{version}.tar.gz"
    if not sdist.is_file():
        say(f"fetching the llama-cpp-python {version} sdist…")
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary"]
        cmd += ["llama-cpp-python", "-q", "-d", str(root), f"llama-cpp-python=={version}"]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0 or not sdist.is_file():
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["?"]
            raise NetworkError(
                f"could not download the llama-cpp-python {version} sdist: {tail[0]}",
                hint="check the network, or unpack the sdist into " + str(root),
            )
    import tarfile

    with tarfile.open(sdist) as tar:
        tar.extractall(root, filter="data")
    if not (vendored / "CMakeLists.txt").is_file():
        raise LocalLLMError(f"the sdist has no vendored llama.cpp: {sdist}")
    return vendored


def _rpc_protocol(src: Path) -> str:
    header = src / "ggml" / "include" / "ggml-rpc.h"
    try:
        text = header.read_text(encoding="utf-8")
    except OSError:
        return "?"
    parts = [
        re.search(rf"#define\s+RPC_PROTO_{k}_VERSION\s+(\d+)", text) for k in ("MAJOR", "MINOR")
    ]
    patch = re.search(r"#define\s+RPC_PROTO_PATCH_VERSION\s+(\d+)", text)
    if not all(parts) or patch is None:
        return "?"
    return ".".join(m.group(1) for m in (*parts, patch))  # type: ignore[union-attr]


def _ggml_ids(lib_dir: Path) -> dict[str, str]:
    """ggml's version and commit, asked of the built library in a separate process (this one
    may have the other libggml loaded)."""
    code = (
        "import ctypes,sys;l=ctypes.CDLL(sys.argv[1]);"
        "[setattr(getattr(l,f),'restype',ctypes.c_char_p) for f in ('ggml_version','ggml_commit')];"
        "print(l.ggml_version().decode());print(l.ggml_commit().decode())"
    )
    lib = lib_dir / _shared_lib("ggml-base")
    done = subprocess.run([sys.executable, "-c", code, str(lib)], capture_output=True, text=True)
    lines = done.stdout.split()
    if done.returncode != 0 or len(lines) < 2:
        return {"ggml_version": "?", "ggml_commit": "?"}
    return {"ggml_version": lines[0], "ggml_commit": lines[1]}


def cmake_command(src: Path, build: Path, extra: str = "") -> list[str]:
    cmd = ["cmake", "-S", str(src), "-B", str(build)]
    if shutil.which("ninja"):
        cmd += ["-G", "Ninja"]
    cmd += [
        "-DCMAKE_BUILD_TYPE=Release",
        "-DBUILD_SHARED_LIBS=ON",
        "-DGGML_RPC=ON",
        "-DLLAMA_CURL=OFF",
        "-DLLAMA_OPENSSL=OFF",
        "-DLLAMA_BUILD_TESTS=OFF",
        "-DLLAMA_BUILD_EXAMPLES=OFF",
        "-DLLAMA_BUILD_SERVER=OFF",
        "-DLLAMA_BUILD_TOOLS=ON",  # tools/rpc (the worker) and tools/mtmd (libmtmd)
        "-DLLAMA_BUILD_COMMON=ON",
    ]
    return cmd + shlex.split(extra)


def build(
    version: str | None = None,
    *,
    jobs: int | None = None,
    force: bool = False,
    say: Callable[[str], None] = lambda _m: None,
    log: Any = None,
) -> RpcBuild:
    """Build (or find) the RPC worker and libraries for ``version``. ``CMAKE_ARGS`` adds flags
    (a GPU backend: ``-DGGML_CUDA=on``) and picks the tag. Compiler output goes to ``log``
    (a file object; default: discarded, its tail is shown on failure)."""
    version = version or installed_version()
    extra = os.environ.get("CMAKE_ARGS", "")
    tag = backend_tag(extra)
    root = cache_root()
    if not force:
        found = find_build(version, tag)
        if found is not None:
            return found
    for tool in ("cmake",):
        if shutil.which(tool) is None:
            raise UsageError(
                f"building the RPC worker needs {tool}",
                hint="install cmake and a C++ compiler (apt install cmake g++ ninja-build)",
            )
    src = _sources(version, root, say)
    out = build_dir(version, tag, root)
    jobs = jobs or int(os.environ.get("JOBS", 0)) or (os.cpu_count() or 2)
    targets = ["llama", "mtmd", "ggml-rpc-server"]
    if not (src / "tools" / "rpc").is_dir():  # an older tree: the worker was an example
        targets[-1] = "rpc-server"
    say(
        f"building llama.cpp with RPC from llama-cpp-python {version}'s sources into {out} "
        f"({jobs} jobs; this takes a while)…"
    )
    start = time.monotonic()
    steps = [
        cmake_command(src, out, extra),
        ["cmake", "--build", str(out), "--target", *targets, "-j", str(jobs)],
    ]
    for cmd in steps:
        done = subprocess.run(
            cmd, stdout=log or subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        if done.returncode != 0:
            tail = "\n".join((done.stdout or "").strip().splitlines()[-15:])
            raise LocalLLMError(
                f"the RPC build failed ({cmd[0]} {cmd[1]}, exit {done.returncode})"
                + (f":\n{tail}" if tail else ""),
                hint="check the compiler output above; CMAKE_ARGS adds CMake flags",
            )
    info = {
        "llama_cpp_python": version,
        "tag": tag,
        "cmake_args": extra,
        "rpc_protocol": _rpc_protocol(src),
        **_ggml_ids(out / "bin"),
        "build_seconds": round(time.monotonic() - start),
    }
    (out / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    found = find_build(version, tag)
    if found is None:
        raise LocalLLMError(f"the RPC build finished but {out / 'bin'} lacks its files")
    say(f"built in {info['build_seconds']} s: {found.label}")
    return found
