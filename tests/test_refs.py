"""Model references, quant names, split groups and the automatic quant pick."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from localllm import refs
from localllm.errors import ModelNotFoundError, ResourceError, UsageError
from localllm.refs import RepoFile, parse_ref


@pytest.mark.parametrize(
    ("text", "kind", "repo", "quant", "filename", "revision"),
    [
        ("smollm2-135m", "alias", None, None, None, None),
        ("SmolLM2-135M", "alias", None, None, None, None),
        ("bartowski/Qwen3-8B-GGUF", "hub", "bartowski/Qwen3-8B-GGUF", None, None, None),
        ("bartowski/Qwen3-8B-GGUF:q4_k_m", "hub", "bartowski/Qwen3-8B-GGUF", "Q4_K_M", None, None),
        (
            "unsloth/Qwen3-8B-GGUF:UD-Q4_K_XL",
            "hub",
            "unsloth/Qwen3-8B-GGUF",
            "UD-Q4_K_XL",
            None,
            None,
        ),
        ("o/r@dev:Q8_0", "hub", "o/r", "Q8_0", None, "dev"),
        ("o/r/model-Q4_K_M.gguf", "hub", "o/r", None, "model-Q4_K_M.gguf", None),
        (
            "o/r/Q4_K_M/m-00001-of-00002.gguf",
            "hub",
            "o/r",
            None,
            "Q4_K_M/m-00001-of-00002.gguf",
            None,
        ),
        ("hf.co/o/r:Q5_K_S", "hub", "o/r", "Q5_K_S", None, None),
        ("huggingface.co/o/r", "hub", "o/r", None, None, None),
        ("https://huggingface.co/o/r", "hub", "o/r", None, None, None),
        (
            "https://huggingface.co/o/r/blob/main/x-Q4_0.gguf",
            "hub",
            "o/r",
            None,
            "x-Q4_0.gguf",
            None,
        ),
        (
            "https://huggingface.co/o/r/resolve/abc123/x.gguf?download=true",
            "hub",
            "o/r",
            None,
            "x.gguf",
            "abc123",
        ),
        ("https://hf.co/o/r/tree/main", "hub", "o/r", None, None, None),
        ("hf://o/r:IQ2_XXS", "hub", "o/r", "IQ2_XXS", None, None),
        ("my-model", "name", None, None, None, None),
    ],
)
def test_parse_ref(
    text: str,
    kind: str,
    repo: str | None,
    quant: str | None,
    filename: str | None,
    revision: str | None,
) -> None:
    ref = parse_ref(text)
    assert (ref.kind, ref.repo, ref.quant, ref.filename, ref.revision) == (
        kind,
        repo,
        quant,
        filename,
        revision,
    )


def test_parse_ref_paths(tmp_path: Path) -> None:
    f = tmp_path / "model.gguf"
    f.write_bytes(b"GGUF")
    assert parse_ref(str(f)).kind == "path"
    assert parse_ref("./nothing/here.gguf").kind == "path"
    assert parse_ref("~/models/x.gguf").kind == "path"
    assert parse_ref("model.gguf").kind == "path"
    assert parse_ref("dir/model.gguf").kind == "path"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "  ",
        "o/r:",
        "-bad/repo",
        "o/r/notgguf.txt",
        "https://example.com/o/r",
        "o/r@:Q4",
        "a/b--c",
    ],
)
def test_parse_ref_rejects(text: str) -> None:
    with pytest.raises(UsageError):
        parse_ref(text)


def test_display_round_trips() -> None:
    for text in ("o/r", "o/r:Q4_K_M", "o/r@v1:Q4_K_M", "o/r/f.gguf"):
        ref = parse_ref(text)
        assert parse_ref(ref.display()) == refs.ModelRef(
            ref.display(), ref.kind, ref.repo, ref.quant, ref.filename, ref.revision
        )


@pytest.mark.parametrize(
    ("name", "quant"),
    [
        ("Qwen3-8B-Q4_K_M.gguf", "Q4_K_M"),
        ("qwen3-8b-q4_k_m.gguf", "Q4_K_M"),
        ("Llama-3.2-1B-Instruct-IQ2_XXS.gguf", "IQ2_XXS"),
        ("Meta-Llama-3.1-8B-Instruct-Q4_0_4_4.gguf", "Q4_0_4_4"),
        ("model.Q8_0.gguf", "Q8_0"),
        ("SmolLM2-135M-Instruct.Q4_1.gguf", "Q4_1"),
        ("gemma-3-270m-it-F16.gguf", "F16"),
        ("model-bf16.gguf", "BF16"),
        ("model-fp16.gguf", "F16"),
        ("Qwen3-8B-UD-Q4_K_XL.gguf", "UD-Q4_K_XL"),
        ("gpt-oss-20b-MXFP4.gguf", "MXFP4"),
        ("Q4_K_M/Qwen3-235B-A22B-Q4_K_M-00001-of-00003.gguf", "Q4_K_M"),
        ("Q6_K/model-00002-of-00002.gguf", "Q6_K"),
        ("Qwen2.5-7B-Instruct.gguf", None),
        ("mmproj-model-f16.gguf", "F16"),
    ],
)
def test_parse_quant(name: str, quant: str | None) -> None:
    assert refs.parse_quant(name) == quant


def test_split_info() -> None:
    assert refs.split_info("m-00002-of-00003.gguf") == (2, 3)
    assert refs.split_info("m-00004-of-00003.gguf") is None
    assert refs.split_info("m.gguf") is None
    assert refs.split_base("dir/m-00001-of-00003.gguf") == "dir/m"


def repo_files() -> list[RepoFile]:
    return [
        RepoFile("README.md", 10),
        RepoFile("m-Q2_K.gguf", 300),
        RepoFile("m-Q4_K_M.gguf", 500),
        RepoFile("m-Q8_0.gguf", 900),
        RepoFile("m-F16.gguf", 1600),
        RepoFile("Q6_K/m-Q6_K-00002-of-00002.gguf", 400),
        RepoFile("Q6_K/m-Q6_K-00001-of-00002.gguf", 400),
        RepoFile("big/m-Q5_K_M-00001-of-00003.gguf", 300),
        RepoFile("big/m-Q5_K_M-00003-of-00003.gguf", 300),
        RepoFile("mmproj-m-f16.gguf", 100),
    ]


def test_group_ggufs_groups_splits_and_notes_projectors() -> None:
    entries = refs.group_ggufs(repo_files())
    by_quant = {e.label: e for e in entries if not e.mmproj}
    six = by_quant["Q6_K"]
    assert six.name == "Q6_K/m-Q6_K-00001-of-00002.gguf"
    assert [f.path for f in six.files] == [
        "Q6_K/m-Q6_K-00001-of-00002.gguf",
        "Q6_K/m-Q6_K-00002-of-00002.gguf",
    ]
    assert six.size == 800 and six.complete and six.split
    five = by_quant["Q5_K_M"]
    assert five.missing_parts == [2] and not five.complete
    proj = [e for e in entries if e.mmproj]
    assert [e.name for e in proj] == ["mmproj-m-f16.gguf"]
    assert entries[-1].mmproj  # projectors come last
    assert "README.md" not in [e.name for e in entries]


def test_select_entry_by_quant_and_file() -> None:
    entries = refs.group_ggufs(repo_files())
    assert refs.select_entry(entries, "o/r", quant="q8_0", filename=None).name == "m-Q8_0.gguf"
    part2 = refs.select_entry(
        entries, "o/r", quant=None, filename="Q6_K/m-Q6_K-00002-of-00002.gguf"
    )
    assert part2.name == "Q6_K/m-Q6_K-00001-of-00002.gguf"  # any part selects the whole model
    with pytest.raises(ModelNotFoundError) as exc:
        refs.select_entry(entries, "o/r", quant="IQ1_S", filename=None)
    assert "Q4_K_M" in (exc.value.hint or "")
    with pytest.raises(ModelNotFoundError):
        refs.select_entry(entries, "o/r", quant=None, filename="nope.gguf")


def test_select_entry_ambiguous_lists_files() -> None:
    entries = refs.group_ggufs([RepoFile("a-Q4_0.gguf", 1), RepoFile("b-Q4_0.gguf", 2)])
    with pytest.raises(ModelNotFoundError) as exc:
        refs.select_entry(entries, "o/r", quant="Q4_0", filename=None)
    assert "o/r/a-Q4_0.gguf" in (exc.value.hint or "")


def verdicts_for(entries: list[refs.GGUFEntry], limit: int, tight: int) -> dict[str, str]:
    out = {}
    for e in entries:
        out[e.name] = "fits" if e.size <= limit else "tight" if e.size <= tight else "won't fit"
    return out


def test_auto_pick_prefers_q4_k_m_when_it_fits() -> None:
    entries = refs.group_ggufs(repo_files())
    pick = refs.auto_pick(entries, verdicts_for(entries, 10_000, 10_000))
    assert pick.entry.quant == "Q4_K_M"
    assert "fits" in pick.reason


def test_auto_pick_falls_back_to_best_that_fits() -> None:
    entries = refs.group_ggufs(repo_files())
    pick = refs.auto_pick(entries, verdicts_for(entries, 400, 600))
    assert pick.entry.quant == "Q2_K"
    assert "Q4_K_M would be too large" in pick.reason
    only_tight = refs.auto_pick(entries, verdicts_for(entries, 100, 600))
    assert only_tight.entry.quant == "Q4_K_M" and "tight" in only_tight.reason
    with pytest.raises(ResourceError):
        refs.auto_pick(entries, verdicts_for(entries, 10, 20))


def test_auto_pick_without_q4_k_m_takes_highest_quality_quantized() -> None:
    entries = refs.group_ggufs(
        [RepoFile("m-Q8_0.gguf", 900), RepoFile("m-Q5_K_M.gguf", 600), RepoFile("m-F16.gguf", 99)]
    )
    pick = refs.auto_pick(entries, verdicts_for(entries, 10_000, 10_000))
    assert pick.entry.quant == "Q8_0"  # full precision is not chosen while a quant fits


@given(st.text(max_size=60))
def test_parse_ref_never_crashes(text: str) -> None:
    try:
        ref = parse_ref(text)
    except UsageError:
        return
    assert ref.kind in ("alias", "hub", "path", "name")


@given(st.text(alphabet="abcQK_0123456789-.IFMXSL/", max_size=40))
def test_parse_quant_never_crashes(name: str) -> None:
    q = refs.parse_quant(name + ".gguf")
    assert q is None or q == q.upper()


def test_urls_of_the_configured_mirror(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_ENDPOINT", "https://hf-mirror.example")
    ref = parse_ref("https://hf-mirror.example/o/r/blob/main/m-Q4_0.gguf")
    assert (ref.repo, ref.filename) == ("o/r", "m-Q4_0.gguf")
    monkeypatch.delenv("HF_ENDPOINT")
    with pytest.raises(UsageError):
        parse_ref("https://hf-mirror.example/o/r")
