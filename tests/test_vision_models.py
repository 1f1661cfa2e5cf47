"""Vision models in the store: pull fetches the projector with the model, import takes one,
show/list say so, rm removes both, verify checks both, the fit estimate counts it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fakehub import FakeHub
from ggufgen import write_tiny_gguf
from mmprojgen import write_tiny_mmproj
from typer.testing import CliRunner

from localllm import loading, profiles, store, vision
from localllm.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def vlm_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("vlm-files")
    return {
        "model": write_tiny_gguf(d / "Tiny-VLM-Q4_K_M.gguf", name="tiny-vlm"),
        "f16": write_tiny_mmproj(d / "mmproj-Tiny-VLM-F16.gguf", seed=3),
        "q8": write_tiny_mmproj(d / "mmproj-Tiny-VLM-Q8_0.gguf", seed=4),
    }


@pytest.fixture
def vlm_repo(fake_hub: FakeHub, vlm_files: dict[str, Path]) -> str:
    fake_hub.add_repo(
        "acme/Tiny-VLM-GGUF",
        {
            "Tiny-VLM-Q4_K_M.gguf": vlm_files["model"],
            "mmproj-Tiny-VLM-Q8_0.gguf": vlm_files["q8"],
            "mmproj-Tiny-VLM-F16.gguf": vlm_files["f16"],
        },
    )
    return "acme/Tiny-VLM-GGUF"


def test_pull_fetches_the_f16_projector(vlm_repo: str, vlm_files: dict[str, Path]) -> None:
    result = runner.invoke(app, ["pull", vlm_repo])
    assert result.exit_code == 0, result.output
    assert "vision projector mmproj-Tiny-VLM-F16.gguf" in result.stderr
    m = store.get(f"{vlm_repo}:Q4_K_M")
    assert m is not None and m.mmproj == "mmproj-Tiny-VLM-F16.gguf"
    projector = m.files_dir / m.mmproj
    assert projector.read_bytes() == vlm_files["f16"].read_bytes()
    assert m.sha256[m.mmproj]  # checked on download, kept for verify
    assert vision.find_projector(m.primary) == projector

    rows = json.loads(runner.invoke(app, ["list", "--json"]).stdout)
    assert rows[0]["modality"] == "text+image" and rows[0]["mmproj"] == m.mmproj
    assert "(vision)" in runner.invoke(app, ["list"]).stdout
    shown = runner.invoke(app, ["show", m.name])
    assert "text + image (projector mmproj-Tiny-VLM-F16.gguf" in shown.stdout

    projector.write_bytes(b"GGUF" + b"\0" * 100)  # corrupt the projector only
    verified = runner.invoke(app, ["verify", m.name])
    assert verified.exit_code != 0
    assert f"mismatch  {m.name}  {m.mmproj}" in verified.stdout

    assert runner.invoke(app, ["rm", m.name, "--yes"]).exit_code == 0
    assert not projector.exists() and not m.primary.exists()


def test_pull_mmproj_choices(vlm_repo: str) -> None:
    from localllm import hub

    assert hub.plan_pull(vlm_repo, mmproj="Q8_0").mmproj == "mmproj-Tiny-VLM-Q8_0.gguf"
    assert hub.plan_pull(vlm_repo, mmproj="mmproj-Tiny-VLM-Q8_0.gguf").projector is not None
    assert hub.plan_pull(vlm_repo, mmproj="none").projector is None
    result = runner.invoke(app, ["pull", vlm_repo, "--mmproj", "Q2_K"])
    assert result.exit_code != 0
    assert "no projector 'Q2_K'" in str(result.exception)


def test_import_with_a_projector(tmp_path: Path, vlm_files: dict[str, Path]) -> None:
    proj = tmp_path / "its-projector.gguf"
    proj.write_bytes(vlm_files["f16"].read_bytes())
    result = runner.invoke(
        app, ["import", str(vlm_files["model"]), "--name", "vlm", "--mmproj", str(proj)]
    )
    assert result.exit_code == 0, result.output
    m = store.get("vlm")
    assert m is not None and m.mmproj == "its-projector.gguf"
    assert vision.find_projector(m.primary) == m.files_dir / "its-projector.gguf"
    assert (
        "text + image (projector its-projector.gguf" in runner.invoke(app, ["show", "vlm"]).stdout
    )
    assert all(c.status == "ok" for c in store.verify(m))
    bad = runner.invoke(app, ["import", str(proj), "--name", "x", "--mmproj", str(proj)])
    assert bad.exit_code != 0


def test_import_refuses_a_text_model_as_projector(tmp_path: Path, vlm_files) -> None:
    result = runner.invoke(
        app, ["import", str(vlm_files["model"]), "--mmproj", str(vlm_files["model"])]
    )
    assert result.exit_code != 0
    assert "not a vision projector" in str(result.exception)


def test_fit_estimate_counts_the_projector(tmp_path: Path, vlm_files, monkeypatch) -> None:
    seen = []
    real = loading.fit.estimate_memory

    def spy(weights: int, *args: object, **kw: object):
        seen.append(weights)
        return real(weights, *args, **kw)

    monkeypatch.setattr(loading.fit, "estimate_memory", spy)
    model = tmp_path / "m.gguf"
    model.write_bytes(vlm_files["model"].read_bytes())
    prof = profiles.resolve(None, {"context_length": 512})
    loading.plan(model, prof)
    (tmp_path / "mmproj-m.gguf").write_bytes(vlm_files["f16"].read_bytes())
    loading.plan(model, prof)
    assert seen[1] - seen[0] == vlm_files["f16"].stat().st_size
