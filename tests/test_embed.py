"""The embedding core on real GGUF files: all-MiniLM-L6-v2 converted from the package index
(checked against a numpy forward pass of its safetensors weights) and tiny generated models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from ggufgen import write_tiny_gguf
from minilm import Reference, write_tiny_bert

from localllm import fit
from localllm.embeddings import Embedder, InputTooLongError, cosine, file_pooling, rank
from localllm.errors import UsageError

SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "A man is riding a horse.",
    "The quick brown fox jumps over the lazy dog!",
    "Embeddings turn text into vectors; similar meanings end up close together.",
    "Ünïcödé àccents, CJK 漢字 and numbers 3.14159 are tokenized too.",
]


@pytest.fixture(scope="module")
def reference(minilm_dir: Path) -> Reference:
    return Reference(minilm_dir)


@pytest.fixture(scope="module")
def f16(minilm_f16: Path) -> Embedder:
    with Embedder(minilm_f16, threads=2) as e:
        yield e


@pytest.mark.slow
def test_converted_minilm_describes_itself(f16: Embedder) -> None:
    assert f16.architecture == "bert"
    assert f16.structure == "encoder-only"
    assert f16.dimension == 384
    assert f16.pooling == "mean" and f16.declared_pooling == "mean"
    assert f16.n_ctx == 512
    assert f16.note is None


@pytest.mark.slow
def test_llama_cpp_tokenizes_like_the_reference_wordpiece(
    f16: Embedder, reference: Reference
) -> None:
    for text in SENTENCES:
        assert f16.tokenize(text).tolist() == reference.tokenizer.encode(text), text


@pytest.mark.slow
def test_f16_matches_numpy_forward_pass(f16: Embedder, reference: Reference) -> None:
    got = f16.embed(SENTENCES).vectors
    for text, vec in zip(SENTENCES, got, strict=True):
        assert cosine(vec, reference.embed(text)) >= 0.999, text


@pytest.mark.slow
def test_q8_0_matches_numpy_forward_pass(minilm_q8: Path, reference: Reference) -> None:
    with Embedder(minilm_q8, threads=2) as e:
        assert e.info.quantization == "Q8_0"
        got = e.embed(SENTENCES).vectors
    for text, vec in zip(SENTENCES, got, strict=True):
        assert cosine(vec, reference.embed(text)) >= 0.99, text


@pytest.mark.slow
def test_similar_meanings_are_closer(f16: Embedder) -> None:
    food, bread, horse = f16.embed(SENTENCES[:3]).vectors
    assert cosine(food, bread) > cosine(food, horse) + 0.2
    scores = rank(food, np.stack([horse, bread]))
    assert scores.argmax() == 1


@pytest.mark.slow
def test_cls_pooling_override(minilm_f16: Path, reference: Reference) -> None:
    with Embedder(minilm_f16, pooling="cls", threads=2) as e:
        assert e.pooling == "cls"
        got = e.embed(SENTENCES[:3]).vectors
    for text, vec in zip(SENTENCES[:3], got, strict=True):
        assert cosine(vec, reference.embed(text, pooling="cls")) >= 0.999


@pytest.mark.slow
def test_many_texts_share_few_calls_and_match_one_by_one(f16: Embedder) -> None:
    texts = [f"{s} (variant {i})" for i in range(20) for s in SENTENCES[:3]]
    together = f16.embed(texts)
    # Sequences are packed into shared calls: every call but the last is filled to within one
    # text of the token budget.
    longest = max(together.token_counts)
    bound = together.prompt_tokens // (f16.batch_tokens - longest) + 1
    assert together.calls <= bound < len(texts) / 4
    assert together.prompt_tokens == sum(together.token_counts) > 0
    alone = [f16.embed([t]).vectors[0] for t in texts[:6]]
    for a, b in zip(alone, together.vectors[:6], strict=True):
        assert cosine(a, b) > 0.9999
    limited = f16.embed(texts[:6], batch_size=2)
    assert limited.calls == 3
    for a, b in zip(limited.vectors, together.vectors[:6], strict=True):
        assert cosine(a, b) > 0.9999


@pytest.fixture(scope="module")
def tiny(tiny_bert: Path) -> Embedder:
    with Embedder(tiny_bert, threads=1) as e:
        yield e


def test_normalize_option(tiny: Embedder) -> None:
    raw = tiny.embed(["hello world", "the man"], normalize=False).vectors
    unit = tiny.embed(["hello world", "the man"]).vectors
    assert raw.dtype == np.float32 and raw.shape == (2, 32)
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0, atol=1e-3)
    assert np.allclose(np.linalg.norm(unit, axis=1), 1.0, atol=1e-5)
    assert np.allclose(unit, raw / np.linalg.norm(raw, axis=1, keepdims=True), atol=1e-5)


def test_too_long_input_names_index_and_length(tiny: Embedder) -> None:
    long_text = "hello " * 100  # 100 words + CLS + SEP on a 64-token context
    with pytest.raises(InputTooLongError) as info:
        tiny.embed(["hello", "world", long_text])
    assert info.value.index == 2
    assert info.value.n_tokens == 102
    assert "input 2 is 102 tokens" in info.value.message
    assert "64" in info.value.message


def test_truncate_keeps_the_closing_separator(tiny: Embedder) -> None:
    long_text = "hello " * 100
    toks = tiny.tokenize(long_text, truncate=True)
    assert len(toks) == 64
    assert toks[0] == 2 and toks[-1] == 3  # [CLS] ... [SEP]
    result = tiny.embed(["hello", long_text], truncate=True)
    assert result.truncated == [1]
    assert result.token_counts == [3, 64]
    cut = tiny.embed_tokens([toks.tolist()])
    assert np.allclose(cut.vectors[0], result.vectors[1], atol=1e-5)


def test_ten_megabyte_line_is_refused_without_tokenizing_it_all(tiny: Embedder) -> None:
    huge = "the man is eating food " * (10 * 1024 * 1024 // 23)
    with pytest.raises(InputTooLongError) as info:
        tiny.embed([huge])
    assert info.value.at_least
    assert "at least" in info.value.message
    result = tiny.embed([huge], truncate=True)
    assert result.truncated == [0] and result.token_counts == [64]


def test_empty_list_is_a_usage_error(tiny: Embedder) -> None:
    with pytest.raises(UsageError, match="nothing to embed"):
        tiny.embed([])
    with pytest.raises(UsageError, match="nothing to embed"):
        tiny.embed_tokens([])


def test_token_arrays_embed_like_text(tiny: Embedder) -> None:
    toks = tiny.tokenize("hello world").tolist()
    assert np.allclose(
        tiny.embed_tokens([toks]).vectors, tiny.embed(["hello world"]).vectors, atol=1e-6
    )
    with pytest.raises(UsageError, match="outside the vocabulary"):
        tiny.embed_tokens([[1, 2, 10_000]])


def test_bert_without_pooling_gets_a_note(model_dir: Path) -> None:
    path = write_tiny_bert(model_dir / "tiny-bert-nopool.gguf", pooling=None, name="plain-bert")
    with Embedder(path, threads=1) as e:
        assert e.declared_pooling is None
        assert e.pooling == "mean"
        assert e.note is not None and "not trained for similarity" in e.note
        assert e.embed(["hello"]).vectors.shape == (1, 32)


def test_reranker_is_refused(model_dir: Path) -> None:
    path = write_tiny_bert(model_dir / "tiny-rerank.gguf", pooling=4, name="tiny-rerank")
    with pytest.raises(UsageError, match="reranker"):
        Embedder(path, threads=1)


def test_unknown_pooling_is_a_usage_error(tiny_bert: Path) -> None:
    with pytest.raises(UsageError, match="unknown pooling"):
        Embedder(tiny_bert, pooling="max")


def test_decoder_with_an_embedding_head(model_dir: Path) -> None:
    path = write_tiny_gguf(
        model_dir / "tiny-decoder-embed.gguf",
        chat_template=None,
        name="tiny-embed-decoder",
        extra_kv={"llama.pooling_type": 3},  # last token, as Qwen3-Embedding declares
        n_ctx_train=256,
    )
    with Embedder(path, threads=1, batch_tokens=256) as e:
        assert e.structure == "decoder-only"
        assert e.declared_pooling == "last" and e.pooling == "last" and e.note is None
        assert e.n_ctx == 256
        texts = ["hello world", "the cat", "a longer piece of text here"] * 4
        result = e.embed(texts)
        assert result.vectors.shape == (12, 64)
        assert result.calls == 1
        # Sequences in one batch do not see each other (the KV cache is per sequence).
        alone = e.embed(["the cat"]).vectors[0]
        assert cosine(alone, result.vectors[1]) > 0.9999


def test_chat_model_gets_a_note(tiny_model: Path) -> None:
    with Embedder(tiny_model, threads=1) as e:
        with pytest.raises(UsageError, match="input 1 is empty"):
            e.embed(["hello", ""])  # no BOS on this vocabulary: nothing to embed
        assert e.pooling == "last"
        assert e.note is not None
        assert "chat model" in e.note and "not trained for similarity" in e.note
        assert e.embed(["hello"]).vectors.shape == (1, 64)


def test_file_pooling_reads_the_arch_key() -> None:
    assert file_pooling({"general.architecture": "bert", "bert.pooling_type": 1}) == "mean"
    assert file_pooling({"general.architecture": "qwen3", "qwen3.pooling_type": 3}) == "last"
    assert file_pooling({"general.architecture": "llama"}) is None
    assert file_pooling({"general.architecture": "bert", "bert.pooling_type": True}) is None


def test_fit_estimate_has_no_kv_cache_for_encoders() -> None:
    bert = fit.ModelShape(6, 384, 12, 12, context_length=512, architecture="bert")
    llama = fit.ModelShape(6, 384, 12, 12, context_length=512, architecture="llama")
    enc = fit.estimate_for_shape(46_000_000, bert, 4096)
    dec = fit.estimate_for_shape(46_000_000, llama, 4096)
    assert enc.kv_cache == 0 and enc.n_ctx == 512
    assert dec.kv_cache > 0 and dec.n_ctx == 4096
    assert enc.total < dec.total


def test_closed_embedder_refuses_work(tiny_bert: Path) -> None:
    e = Embedder(tiny_bert, threads=1)
    e.close()
    with pytest.raises(Exception, match="closed"):
        e.embed(["hello"])
