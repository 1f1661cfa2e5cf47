"""Image prompt figures on the test fixture: encode time and image tokens for a 512×512 PNG,
and prompt speed with an image against a text prompt of the same number of tokens.

    PYTHONPATH=. python scripts/bench_vision.py [--big]

``--big``: a 224 px / 14 px-patch projector (256 image tokens) instead of the 32 px fixture.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from ggufgen import write_tiny_gguf
from imagegen import png_bytes
from mmprojgen import write_tiny_mmproj

from localllm import images, profiles, vision
from localllm.loading import open_engine


def main() -> None:
    big = "--big" in sys.argv
    folder = Path(tempfile.mkdtemp())
    model = write_tiny_gguf(folder / "m.gguf", n_embd=256, n_head=4, n_ff=512, n_layer=4)
    kw = dict(n_embd=256, n_ff=1024, n_layer=4, image_size=224, patch_size=14) if big else {}
    proj_path = write_tiny_mmproj(folder / "mmproj.gguf", n_embd_text=256, **kw)
    prof = profiles.resolve(
        None, {"temperature": 0.0, "max_tokens": 1, "context_length": 2048, "threads": 2}
    )
    eng = open_engine(model, prof)
    proj = vision.Projector(eng, proj_path)
    img = images.from_bytes(png_bytes(512, 512), "512.png")
    head = "<|im_start|>user\n"
    tail = "\nDescribe<|im_end|>\n<|im_start|>assistant\n"
    encode, image_prefill, n_tokens = [], [], 0
    for _ in range(5):
        eng.reset()
        t0 = time.perf_counter()
        tokens = proj.prefill(head + vision.MARKER + tail, [img])
        image_prefill.append(time.perf_counter() - t0)
        encode.append(proj.stats.encode_s)
        n_tokens = len(tokens)
    image_tokens = proj.stats.image_tokens
    # A text prompt of the same length, evaluated the same way (all but its last token).
    filler = " the" * (image_tokens + 8)
    text_tokens = eng.tokenize(head + filler + tail)
    cut = len(text_tokens) - n_tokens
    text_tokens = text_tokens[:1] + text_tokens[1 + cut :] if cut > 0 else text_tokens
    text_prefill = []
    for _ in range(5):
        eng.reset()
        t0 = time.perf_counter()
        proj._decode_text(text_tokens[:-1], 0, eng.native.ctx, eng.native.n_batch)
        text_prefill.append(time.perf_counter() - t0)
    med = statistics.median
    print(f"projector: {'224 px / 14 px patches' if big else 'fixture, 32 px / 8 px patches'}")
    ms = med(encode) * 1000
    print(f"512x512 PNG: {image_tokens} image tokens, encode {ms:.2f} ms (median of 5)")
    print(
        f"prompt with the image: {n_tokens} tokens in {med(image_prefill) * 1000:.2f} ms "
        f"= {n_tokens / med(image_prefill):.0f} t/s (PNG decode + encode + text)"
    )
    print(
        f"text prompt, {len(text_tokens)} tokens: {med(text_prefill) * 1000:.2f} ms "
        f"= {len(text_tokens) / med(text_prefill):.0f} t/s"
    )
    proj.close()
    eng.close()


if __name__ == "__main__":
    main()
