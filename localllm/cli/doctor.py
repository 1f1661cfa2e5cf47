"""``localllm doctor``: what this installation runs on, and what to fix.

Versions (Python, llama-cpp-python, the llama.cpp/ggml it was built from), the backends compiled
in and their devices with free and total memory, the CPU and the instruction sets llama.cpp
uses, RAM, the model store, the Hub endpoint and offline state. When the machine has a GPU the
build cannot use, it prints the command that reinstalls llama-cpp-python with that backend.

It never opens a network connection, except to the RPC workers named with ``--rpc``: each is
asked its protocol version, devices and memory over llama.cpp's own RPC protocol (nothing is
registered or loaded there).
"""

from __future__ import annotations

import os
import platform
import shutil
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from localllm.cli._app import app, print_json

REINSTALL = 'CMAKE_ARGS="{flag}" pip install --force-reinstall --no-cache-dir llama-cpp-python'
GPU_BACKENDS = {
    # hardware: (backend names that serve it, CMake flag)
    "nvidia": (("CUDA",), "-DGGML_CUDA=on"),
    "apple": (("Metal", "MTL"), "-DGGML_METAL=on"),
    "amd": (("ROCm", "HIP", "Vulkan"), "-DGGML_HIP=on"),
}


def cpu_model() -> str:
    """The CPU's marketing name, from /proc/cpuinfo or sysctl; platform.processor() else."""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model", "cpu model") and value.strip():
                return value.strip()
    except OSError:
        pass
    if sys.platform == "darwin":
        import subprocess

        try:
            out = subprocess.run(
                ["sysctl", "-n", "machdep.cpu.brand_string"],
                capture_output=True,
                text=True,
                timeout=5,
            )
            if out.returncode == 0 and out.stdout.strip():
                return out.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    return platform.processor() or platform.machine() or "unknown"


def detect_gpu_hardware() -> dict[str, list[str]]:
    """GPUs present on the machine whatever llama.cpp was built with: ``{"nvidia": [names]}``,
    ``{"apple": ["Apple Silicon"]}``, ``{"amd": [...]}``. Reads /proc and /sys; no network."""
    found: dict[str, list[str]] = {}
    nvidia = Path("/proc/driver/nvidia")
    if nvidia.exists() or shutil.which("nvidia-smi"):
        names = []
        for info in sorted((nvidia / "gpus").glob("*/information")):
            try:
                for line in info.read_text(errors="replace").splitlines():
                    if line.startswith("Model:"):
                        names.append(line.partition(":")[2].strip())
            except OSError:
                continue
        found["nvidia"] = names or ["NVIDIA GPU"]
    if sys.platform == "darwin" and platform.machine() == "arm64":
        found["apple"] = ["Apple Silicon"]
    if Path("/dev/kfd").exists() and Path("/sys/module/amdgpu").exists():
        found["amd"] = ["AMD GPU"]
    return found


def reinstall_advice(hardware: dict[str, list[str]], backends: list[str]) -> list[str]:
    """For each GPU whose backend this build lacks: what is missing and the fix."""
    have = {b.lower() for b in backends}
    advice = []
    for kind, names in hardware.items():
        wanted, flag = GPU_BACKENDS[kind]
        if any(w.lower() in name for w in wanted for name in have):
            continue
        advice.append(
            f"{', '.join(names)} found, but this llama-cpp-python has no "
            f"{wanted[0]} backend; reinstall it with:\n  {REINSTALL.format(flag=flag)}"
        )
    return advice


def _store(path: Path) -> dict[str, Any]:
    size = files = 0
    if path.is_dir():
        for root, _dirs, names in os.walk(path):
            for name in names:
                try:
                    size += (Path(root) / name).stat().st_size
                    files += 1
                except OSError:
                    continue
    return {"path": str(path), "exists": path.is_dir(), "size_bytes": size, "files": files}


def foreign_stores() -> list[dict[str, Any]]:
    """Which other tools' model stores exist here and how many models each holds (a cheap
    scan: manifests and folder listings, never the weights)."""
    from localllm import foreign

    enabled = foreign.enabled_stores()
    out = []
    for name in foreign.STORES:
        entry: dict[str, Any] = {"store": name, "label": foreign.LABELS[name]}
        if name not in enabled:
            out.append({**entry, "enabled": False, "found": False, "roots": [], "models": 0})
            continue
        try:
            scan = foreign.scan_store(name)
        except Exception as exc:  # doctor reports; it never fails over another tool's files
            out.append({**entry, "enabled": True, "found": False, "error": str(exc)})
            continue
        out.append(
            {
                **entry,
                "enabled": True,
                "found": scan.found,
                "roots": [str(r) for r in scan.roots],
                "models": len(scan.usable()),
                "broken": [{"name": m.ref, "reason": m.broken} for m in scan.broken()],
            }
        )
    return out


_FOREIGN_LABELS = {
    "ollama": "Ollama store",
    "lmstudio": "LM Studio models",
    "llama.cpp": "llama.cpp cache",
}


def _foreign_text(entry: dict[str, Any]) -> str:
    if not entry.get("enabled", True):
        return "not scanned (LOCALLLM_FOREIGN_STORES)"
    if "error" in entry:
        return f"cannot scan: {entry['error']}"
    if not entry["found"]:
        return "not found"
    n = entry["models"]
    text = f"{', '.join(entry['roots'])} ({n} model{'s' if n != 1 else ''}"
    broken = len(entry.get("broken") or [])
    text += f", {broken} broken)" if broken else ")"
    return text


def rpc_report(backends: list[str], workers: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """Whether this installation can split a model across machines, and what each worker in
    ``workers`` (``HOST:PORT``) says about itself."""
    from localllm import rpcbuild, rpcwire

    out: dict[str, Any] = {"installed_build_has_rpc": "RPC" in backends}
    try:
        found = rpcbuild.find_build()
    except Exception:  # no llama-cpp-python: reported above
        found = None
    out["localllm_build"] = (
        {
            "path": str(found.root),
            "worker": str(found.worker),
            "label": found.label,
            "rpc_protocol": found.info.get("rpc_protocol"),
        }
        if found
        else None
    )
    out["available"] = out["installed_build_has_rpc"] or found is not None
    out["fix"] = (
        None if out["available"] else f"localllm worker --build   (or: {rpcbuild.REINSTALL})"
    )
    expect = found.info.get("rpc_protocol") if found else None
    expect = expect if expect and expect != "?" else None
    out["workers"] = []
    for endpoint in workers:
        info = rpcwire.probe(endpoint, expect=expect)
        out["workers"].append(
            {
                "endpoint": endpoint,
                "reachable": info.reachable,
                "protocol": info.protocol or None,
                "same_protocol": (info.protocol == expect) if expect and info.protocol else None,
                "devices": [{"free_bytes": f, "total_bytes": t} for f, t in info.devices],
                "free_bytes": info.free if info.devices else None,
                "total_bytes": info.total if info.devices else None,
                "problem": info.problem or None,
            }
        )
    return out


def _rpc_rows(rpc: dict[str, Any]) -> list[tuple[str, str]]:
    build = rpc.get("localllm_build")
    if rpc.get("installed_build_has_rpc"):
        state = "yes (the installed llama-cpp-python has it)"
    elif build:
        state = f"yes, through localllm's build (used by --rpc): {build['path']}"
    else:
        state = (
            "no: this llama-cpp-python has no RPC backend (to split models across machines: "
            f"{rpc.get('fix')})"
        )
    rows = [("RPC", state)]
    if build:
        rows.append(("RPC build", build["label"]))
    for w in rpc.get("workers", []):
        if not w["reachable"]:
            text = f"unreachable: {w['problem']}"
        elif not w["protocol"]:
            text = f"not usable: {w['problem']}"
        else:
            text = f"reachable · RPC protocol {w['protocol']}"
            if w["same_protocol"] is not None:
                text += " (same as this build)" if w["same_protocol"] else " (DIFFERENT build)"
            if w["devices"]:
                text += (
                    f" · {len(w['devices'])} device{'s' if len(w['devices']) != 1 else ''} · "
                    f"{_bytes(w['free_bytes'])} free of {_bytes(w['total_bytes'])}"
                )
            if w["problem"]:
                text += f" · problem: {w['problem']}"
        rows.append((f"worker {w['endpoint']}", text))
    return rows


def collect(rpc_workers: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """Everything ``doctor`` reports, JSON-ready."""
    from localllm import hub, paths
    from localllm.hardware import physical_cores

    report: dict[str, Any] = {
        "python": {
            "version": platform.python_version(),
            "implementation": platform.python_implementation(),
            "executable": sys.executable,
        },
        "platform": {
            "system": platform.system(),
            "release": platform.release(),
            "machine": platform.machine(),
        },
    }
    llama: dict[str, Any] = {}
    try:
        from localllm import backend

        llama.update(backend.llama_cpp_versions())
        llama["system_info"] = backend.system_info()
        llama["gpu_offload"] = backend.gpu_offload_supported()
        llama["backends"] = backend.backends()
        llama["devices"] = [d.as_dict() for d in backend.devices()]
        simd = backend.simd_features(llama["system_info"])
    except Exception as exc:  # a broken llama_cpp install is exactly what doctor is for
        llama["error"] = f"{type(exc).__name__}: {exc}"
        llama.setdefault("backends", [])
        llama.setdefault("devices", [])
        simd = []
    report["llama_cpp"] = llama
    report["cpu"] = {
        "model": cpu_model(),
        "physical_cores": physical_cores(),
        "logical_cores": os.cpu_count() or 1,
        "simd": simd,
    }
    try:
        import psutil

        vm = psutil.virtual_memory()
        report["memory"] = {"total_bytes": int(vm.total), "available_bytes": int(vm.available)}
    except Exception:  # pragma: no cover - psutil is a dependency
        report["memory"] = {"total_bytes": None, "available_bytes": None}
    report["store"] = _store(paths.models_dir())
    report["foreign_stores"] = foreign_stores()
    report["hub"] = {"endpoint": hub.endpoint(), "offline": hub.is_offline()}
    hardware = detect_gpu_hardware()
    report["gpu_hardware"] = hardware
    report["advice"] = reinstall_advice(hardware, llama["backends"])
    report["rpc"] = rpc_report(llama["backends"], rpc_workers)
    if report["rpc"]["fix"] and rpc_workers:
        report["advice"].append(
            "this installation cannot split a model across machines (no RPC backend); "
            f"fix with:\n  {report['rpc']['fix']}"
        )
    return report


def _bytes(n: int | None) -> str:
    if n is None:
        return "?"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover


def format_report(report: dict[str, Any]) -> str:
    """The human-readable report: one ``label  value`` line each, grouped."""
    py, llama, cpu, mem = report["python"], report["llama_cpp"], report["cpu"], report["memory"]
    store, hubinfo = report["store"], report["hub"]
    rows: list[tuple[str, str]] = [
        ("python", f"{py['version']} ({py['executable']})"),
        (
            "platform",
            f"{report['platform']['system']} {report['platform']['release']} "
            f"{report['platform']['machine']}",
        ),
    ]
    if "error" in llama:
        rows.append(("llama-cpp-python", f"cannot load: {llama['error']}"))
    else:
        rows.append(("llama-cpp-python", llama.get("llama_cpp_python", "?")))
        rows.append(
            (
                "llama.cpp (ggml)",
                f"{llama.get('ggml', '?')} (commit {llama.get('ggml_commit', '?')})",
            )
        )
        rows.append(("backends", ", ".join(llama["backends"]) or "none"))
        rows.append(("GPU offload", "yes" if llama.get("gpu_offload") else "no (CPU-only build)"))
        for dev in llama["devices"]:
            rows.append(
                (
                    f"device {dev['name']}",
                    f"{dev['description']} [{dev['type']}] · "
                    f"{_bytes(dev['free_bytes'])} free of {_bytes(dev['total_bytes'])}",
                )
            )
    rows += [
        ("CPU", cpu["model"]),
        ("cores", f"{cpu['physical_cores']} physical, {cpu['logical_cores']} logical"),
        ("SIMD", " ".join(cpu["simd"]) or "none reported"),
        ("RAM", f"{_bytes(mem['available_bytes'])} available of {_bytes(mem['total_bytes'])}"),
        (
            "store",
            f"{store['path']} ({_bytes(store['size_bytes'])} in {store['files']} files)"
            if store["exists"]
            else f"{store['path']} (empty)",
        ),
        *(
            (_FOREIGN_LABELS[e["store"]], _foreign_text(e))
            for e in report.get("foreign_stores", [])
        ),
        (
            "Hub",
            hubinfo["endpoint"]
            + (
                " (offline: HF_HUB_OFFLINE is set)"
                if hubinfo["offline"]
                else " (contacted when a command needs it; doctor itself stays off the network)"
            ),
        ),
        *(_rpc_rows(report["rpc"]) if "rpc" in report else ()),
    ]
    width = max(len(label) for label, _ in rows)
    lines = [f"{label.ljust(width)}  {value}" for label, value in rows]
    for item in report["advice"]:
        lines.append("")
        lines.append("warning: " + item)
    return "\n".join(lines)


@app.command()
def doctor(
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    rpc: Annotated[
        str | None,
        typer.Option(
            "--rpc",
            help="Also ask these RPC workers (HOST:PORT[,HOST:PORT...]) their version and memory.",
            metavar="HOST:PORT,...",
        ),
    ] = None,
) -> None:
    """Show versions, backends, devices, CPU, memory and store; suggest fixes."""
    from localllm.profiles import validate_overrides

    workers = validate_overrides({"rpc": rpc}).get("rpc", ()) if rpc else ()
    report = collect(workers)
    if as_json:
        print_json(report)
    else:
        print(format_report(report))
