"""Write a tiny random-weight vision projector (mmproj) GGUF that llama.cpp's clip code loads.

The projector is LLaVA-style (``clip.projector_type = "mlp"``): a small ViT (patch
embedding, position embedding, a few pre-norm transformer blocks) followed by a two-layer MLP
(``mm.0`` / ``mm.2``) whose output width must equal the text model's embedding size. With a
32x32 input and 8x8 patches an image becomes 16 embeddings ("image tokens") in milliseconds.

Tensor names and required keys follow llama.cpp ``tools/mtmd/clip-impl.h`` (``TN_*``,
``KEY_*``) and ``clip.cpp`` (``load_hparams``, ``load_tensors``, the llava graph).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_tiny_mmproj(
    path: str | Path,
    *,
    n_embd_text: int = 64,
    n_embd: int = 32,
    n_head: int = 4,
    n_ff: int = 64,
    n_layer: int = 2,
    image_size: int = 32,
    patch_size: int = 8,
    seed: int = 1,
    name: str = "tiny-mmproj",
) -> Path:
    """Write the projector and return its path. ``n_embd_text`` is the width of the text
    model it feeds (a different value gives a mismatched projector)."""
    import gguf

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)

    def t(*shape: int, scale: float = 0.1) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    w = gguf.GGUFWriter(str(path), "clip")
    w.add_name(name)
    w.add_file_type(0)
    w.add_bool("clip.has_vision_encoder", True)
    w.add_bool("clip.has_audio_encoder", False)
    w.add_string("clip.projector_type", "mlp")
    w.add_bool("clip.use_gelu", True)
    w.add_uint32("clip.vision.image_size", image_size)
    w.add_uint32("clip.vision.patch_size", patch_size)
    w.add_uint32("clip.vision.embedding_length", n_embd)
    w.add_uint32("clip.vision.feed_forward_length", n_ff)
    w.add_uint32("clip.vision.block_count", n_layer)
    w.add_uint32("clip.vision.projection_dim", n_embd_text)
    w.add_uint32("clip.vision.attention.head_count", n_head)
    w.add_float32("clip.vision.attention.layer_norm_epsilon", 1e-5)
    w.add_array("clip.vision.image_mean", [0.5, 0.5, 0.5])
    w.add_array("clip.vision.image_std", [0.5, 0.5, 0.5])

    n_patches = (image_size // patch_size) ** 2
    # ggml shapes are reversed numpy shapes: the conv kernel is ne [p, p, 3, n_embd].
    w.add_tensor("v.patch_embd.weight", t(n_embd, 3, patch_size, patch_size))
    w.add_tensor("v.patch_embd.bias", t(n_embd))
    w.add_tensor("v.position_embd.weight", t(n_patches, n_embd))
    w.add_tensor("v.pre_ln.weight", np.ones(n_embd, dtype=np.float32))
    w.add_tensor("v.pre_ln.bias", np.zeros(n_embd, dtype=np.float32))
    for i in range(n_layer):
        p = f"v.blk.{i}"
        for part in ("attn_q", "attn_k", "attn_v", "attn_out"):
            w.add_tensor(f"{p}.{part}.weight", t(n_embd, n_embd))
            w.add_tensor(f"{p}.{part}.bias", t(n_embd))
        for ln in ("ln1", "ln2"):
            w.add_tensor(f"{p}.{ln}.weight", np.ones(n_embd, dtype=np.float32))
            w.add_tensor(f"{p}.{ln}.bias", np.zeros(n_embd, dtype=np.float32))
        w.add_tensor(f"{p}.ffn_up.weight", t(n_ff, n_embd))
        w.add_tensor(f"{p}.ffn_up.bias", t(n_ff))
        w.add_tensor(f"{p}.ffn_down.weight", t(n_embd, n_ff))
        w.add_tensor(f"{p}.ffn_down.bias", t(n_embd))
    w.add_tensor("mm.0.weight", t(n_embd_text, n_embd))
    w.add_tensor("mm.0.bias", t(n_embd_text))
    w.add_tensor("mm.2.weight", t(n_embd_text, n_embd_text))
    w.add_tensor("mm.2.bias", t(n_embd_text))

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
