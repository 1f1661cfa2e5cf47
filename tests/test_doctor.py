"""``localllm doctor``: the report's shape, its JSON schema, the reinstall advice, and that it
never touches the network."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from localllm import backend
from localllm.cli import app, doctor

runner = CliRunner()

LABELS = (
    "python",
    "llama-cpp-python",
    "llama.cpp (ggml)",
    "backends",
    "GPU offload",
    "device CPU",
    "CPU",
    "cores",
    "SIMD",
    "RAM",
    "store",
    "Hub",
)


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"doctor opened a network connection: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def test_report_lines(no_network: None) -> None:
    result = runner.invoke(app, ["doctor"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    labels = [line.split("  ")[0].strip() for line in lines if line and line[0] != " "]
    for label in LABELS:
        assert label in labels, (label, result.stdout)
    assert "0.3" in result.stdout  # the llama-cpp-python version


def test_hub_line_claims_nothing_it_did_not_check(
    no_network: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """doctor never contacts the Hub, so its line must not call the Hub reachable (it said
    "(online)" on a machine whose Hub lookups all failed); offline mode is named as such."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)

    def hub_line() -> str:
        result = runner.invoke(app, ["doctor"])
        assert result.exit_code == 0, result.output
        return next(line for line in result.stdout.splitlines() if line.startswith("Hub"))

    line = hub_line()
    assert "online" not in line and "reachable" not in line, line
    assert "stays off the network" in line, line
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert "offline: HF_HUB_OFFLINE is set" in hub_line()


def test_json_schema(no_network: None) -> None:
    result = runner.invoke(app, ["doctor", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert set(data) == {
        "python",
        "platform",
        "llama_cpp",
        "cpu",
        "memory",
        "store",
        "foreign_stores",
        "hub",
        "gpu_hardware",
        "advice",
        "rpc",  # whether models can be split across machines (tests/test_rpc.py)
    }
    llama = data["llama_cpp"]
    assert {"llama_cpp_python", "ggml", "ggml_commit", "system_info", "gpu_offload"} <= set(llama)
    assert "CPU" in llama["backends"]
    assert llama["devices"], "llama.cpp reports at least the CPU device"
    for dev in llama["devices"]:
        assert set(dev) == {"name", "description", "type", "backend", "free_bytes", "total_bytes"}
        assert 0 <= dev["free_bytes"] <= dev["total_bytes"] or dev["total_bytes"] == 0
    cpu = data["cpu"]
    assert cpu["physical_cores"] >= 1 and cpu["logical_cores"] >= cpu["physical_cores"]
    assert isinstance(cpu["simd"], list) and cpu["model"]
    assert data["memory"]["total_bytes"] >= data["memory"]["available_bytes"] > 0
    assert set(data["store"]) == {"path", "exists", "size_bytes", "files"}
    assert data["hub"] == {"endpoint": "https://huggingface.co", "offline": True}
    assert isinstance(data["advice"], list)


def test_store_location_and_size(isolated_home: Path) -> None:
    from localllm import paths

    folder = paths.models_dir() / "some-model"
    folder.mkdir(parents=True)
    (folder / "x.gguf").write_bytes(b"\0" * 1000)
    data = json.loads(runner.invoke(app, ["doctor", "--json"]).stdout)
    assert data["store"] == {
        "path": str(paths.models_dir()),
        "exists": True,
        "size_bytes": 1000,
        "files": 1,
    }


def test_hub_endpoint_and_offline_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_ENDPOINT", "https://mirror.example")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    data = json.loads(runner.invoke(app, ["doctor", "--json"]).stdout)
    assert data["hub"] == {"endpoint": "https://mirror.example", "offline": False}


def test_reinstall_command_for_a_gpu_the_build_lacks() -> None:
    advice = doctor.reinstall_advice({"nvidia": ["NVIDIA H200"]}, ["CPU"])
    assert len(advice) == 1
    assert "NVIDIA H200" in advice[0] and "CUDA" in advice[0]
    assert (
        'CMAKE_ARGS="-DGGML_CUDA=on" pip install --force-reinstall --no-cache-dir '
        "llama-cpp-python" in advice[0]
    )
    metal = doctor.reinstall_advice({"apple": ["Apple Silicon"]}, ["CPU", "BLAS"])
    assert 'CMAKE_ARGS="-DGGML_METAL=on"' in metal[0]


def test_no_advice_when_the_backend_is_there() -> None:
    assert doctor.reinstall_advice({"nvidia": ["H200"]}, ["CUDA", "CPU"]) == []
    assert doctor.reinstall_advice({"apple": ["Apple Silicon"]}, ["Metal", "BLAS", "CPU"]) == []
    assert doctor.reinstall_advice({}, ["CPU"]) == []


def test_advice_is_printed_as_a_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(doctor, "detect_gpu_hardware", lambda: {"nvidia": ["NVIDIA H200"]})
    monkeypatch.setattr(backend, "backends", lambda: ["CPU"])
    result = runner.invoke(app, ["doctor"])
    assert result.exit_code == 0
    assert "warning: NVIDIA H200 found" in result.stdout
    assert 'CMAKE_ARGS="-DGGML_CUDA=on"' in result.stdout


def test_a_broken_llama_cpp_is_reported_not_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken() -> dict[str, str]:
        raise OSError("libllama.so: cannot open shared object file")

    monkeypatch.setattr(backend, "llama_cpp_versions", broken)
    result = runner.invoke(app, ["doctor", "--json"])
    assert result.exit_code == 0
    assert "libllama.so" in json.loads(result.stdout)["llama_cpp"]["error"]
    text = runner.invoke(app, ["doctor"]).stdout
    assert "cannot load" in text


def test_system_info_parsing() -> None:
    info = (
        "CPU : SSE3 = 1 | AVX = 1 | AVX2 = 1 | AVX512 = 0 | LLAMAFILE = 1 | OPENMP = 1 | "
        "CUDA : ARCHS = 900 | USE_GRAPHS = 1 |"
    )
    sections = backend.parse_system_info(info)
    assert sections["CPU"]["AVX2"] == "1" and sections["CUDA"]["ARCHS"] == "900"
    assert backend.simd_features(info) == ["SSE3", "AVX", "AVX2"]
    assert backend.simd_features("CPU : NEON = 1 | ARM_FMA = 1 | DOTPROD = 1 |") == [
        "NEON",
        "ARM_FMA",
        "DOTPROD",
    ]


def test_devices_and_backends_from_llama_cpp() -> None:
    names = backend.backends()
    assert "CPU" in names
    devs = backend.devices()
    assert any(d.kind == "cpu" for d in devs)
    if not backend.gpu_offload_supported():
        assert backend.gpu_free_memory() is None
        assert backend.gpu_backend_name() == "CPU"
        assert backend.backend_name(10) == "CPU"
    assert backend.backend_name(0) == "CPU"
