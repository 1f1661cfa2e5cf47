"""Images in, text out: a tiny random-weight LLaVA-style projector beside a tiny text model
whose embedding size matches, so load → encode → eval → generate runs in milliseconds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from ggufgen import write_tiny_gguf
from imagegen import pillow_bytes, png_bytes, png_header_only
from mmprojgen import write_tiny_mmproj

from localllm import images, profiles, vision
from localllm.engine import Stats, TextEvent
from localllm.errors import InvalidModelError, UsageError
from localllm.loading import open_engine
from localllm.session import AnswerText, ChatSession

FORCED = 'root ::= "a red square"'


@pytest.fixture(scope="session")
def vision_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("vision")
    write_tiny_gguf(folder / "tiny-vlm.gguf", name="tiny-vlm", n_embd=64)
    write_tiny_mmproj(folder / "mmproj-tiny-vlm-f32.gguf", n_embd_text=64)
    write_tiny_mmproj(folder.parent / "wrong-width-mmproj.gguf", n_embd_text=48)
    (folder / "red.png").write_bytes(png_bytes(512, 512, (220, 20, 20)))
    (folder / "blue.png").write_bytes(png_bytes(40, 30, (10, 20, 230)))
    red, blue = (folder / "red.png").read_bytes(), (folder / "blue.png").read_bytes()
    # lossless: the same pixels as red.png, so the same answer
    (folder / "red.webp").write_bytes(pillow_bytes([red], "WEBP", lossless=True))
    (folder / "blue.webp").write_bytes(pillow_bytes([blue], "WEBP"))
    webp = pillow_bytes([red, blue], "WEBP")
    (folder / "cut.webp").write_bytes(webp[: len(webp) // 2])
    return folder


@pytest.fixture(scope="session")
def vision_model(vision_dir: Path) -> Path:
    return vision_dir / "tiny-vlm.gguf"


def settings(**kw: object) -> profiles.Profile:
    base = {"temperature": 0.0, "max_tokens": 8, "context_length": 512, "threads": 1}
    return profiles.resolve(None, {**base, **kw})


@pytest.fixture
def loaded(vision_model: Path):
    eng = open_engine(vision_model, settings())
    proj = vision.Projector(eng, vision_model.parent / "mmproj-tiny-vlm-f32.gguf")
    yield eng, proj
    proj.close()
    eng.close()


def image(folder: Path, name: str) -> images.Image:
    return images.read_image(str(folder / name))


def answer(session: ChatSession, text: str, pictures: list[images.Image], **kw: object) -> str:
    return "".join(
        e.text for e in session.send(text, images=pictures, **kw) if isinstance(e, AnswerText)
    )


# -- the engine path --------------------------------------------------------------------


def test_image_is_encoded_and_generation_continues_in_our_loop(loaded, vision_dir) -> None:
    eng, proj = loaded
    prompt = f"<|im_start|>user\n{vision.MARKER}\nDescribe<|im_end|>\n<|im_start|>assistant\n"
    tokens = proj.prefill(prompt, [image(vision_dir, "red.png")])
    assert tokens is not None
    assert proj.stats.image_tokens == 16  # 32x32 input, 8x8 patches
    assert proj.stats.encoded == 1
    assert len(tokens) == proj.stats.image_tokens + proj.stats.text_tokens
    events = list(eng.generate(tokens, settings(max_tokens=20), grammar=FORCED))
    text = "".join(e.text for e in events if isinstance(e, TextEvent))
    stats = events[-1]
    assert isinstance(stats, Stats)
    assert text == "a red square"
    assert stats.prompt_tokens == len(tokens)  # image positions count in the context


def test_bos_is_added_once(tmp_path: Path) -> None:
    """A template that writes the BOS text, on a model whose metadata adds one: one BOS."""
    model = write_tiny_gguf(
        tmp_path / "spm.gguf",
        vocab="llama",
        chat_template="{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}",
    )
    write_tiny_mmproj(tmp_path / "mmproj-spm.gguf", n_embd_text=64)
    with open_engine(model, settings()) as eng:
        proj = vision.Projector(eng, tmp_path / "mmproj-spm.gguf")
        bos = eng.tokenize("", add_bos=True)[0]
        for prompt in (f"{eng.info.bos_token}{vision.MARKER} hello", f"{vision.MARKER} hello"):
            tokens = proj.prefill(prompt, [images.from_bytes(png_bytes(8, 8), "x.png")])
            assert tokens is not None
            assert tokens[0] == bos and tokens[1] != bos
        proj.close()


def test_the_image_reaches_the_model(vision_model, vision_dir) -> None:
    """Greedy answers differ with the picture and repeat with the same one."""
    outs = {}
    for name in ("red.png", "blue.png", "red.png"):
        with open_engine(vision_model, settings(max_tokens=12)) as eng:
            proj = vision.Projector(eng, vision_dir / "mmproj-tiny-vlm-f32.gguf")
            session = ChatSession(eng, settings(max_tokens=12), projector=proj)
            said = answer(session, "What is it?", [image(vision_dir, name)])
            outs.setdefault(name, []).append(said)
            proj.close()
    assert outs["red.png"][0] == outs["red.png"][1]
    assert outs["red.png"][0] != outs["blue.png"][0]


def test_animated_images_give_their_first_frame(vision_model, vision_dir) -> None:
    """stb_image reads a GIF's first frame itself; an animated WebP's first frame is what
    Pillow converts. Frames red then blue answer as red alone does, not as blue then red."""
    red, blue = (vision_dir / "red.png").read_bytes(), (vision_dir / "blue.png").read_bytes()
    outs = []
    with open_engine(vision_model, settings(max_tokens=12)) as eng:
        proj = vision.Projector(eng, vision_dir / "mmproj-tiny-vlm-f32.gguf")
        for fmt in ("GIF", "WEBP"):
            for frames in ([red, blue], [red], [blue, red]):
                data = images.from_bytes(pillow_bytes(frames, fmt), f"x.{fmt.lower()}")
                session = ChatSession(eng, settings(max_tokens=12), projector=proj)
                outs.append(answer(session, "What is it?", [data]))
        proj.close()
    for first, alone, other in (outs[:3], outs[3:]):
        assert first == alone
        assert first != other


def test_second_turn_reuses_the_encoded_image(loaded, vision_dir) -> None:
    eng, proj = loaded
    session = ChatSession(eng, settings(), projector=proj)
    answer(session, "Describe", [image(vision_dir, "red.png")], grammar=FORCED)
    assert proj.stats.encoded == 1
    answer(session, "And the colour?", [], grammar=FORCED)
    assert proj.stats.encoded == 0  # found in the KV cache
    assert proj.stats.cached > proj.stats.image_tokens
    assert session.last_turn.stats.cached_tokens == proj.stats.cached
    assert session.messages[0]["images"][0].name == "red.png"


def test_a_text_request_after_an_image_request(loaded, vision_dir) -> None:
    """The server's sessions share an engine: a text-only request after an image one must
    not meet image placeholders in the engine's cache."""
    eng, proj = loaded
    session = ChatSession(eng, settings(max_tokens=30), projector=proj)
    answer(session, "Describe", [image(vision_dir, "red.png")], grammar=FORCED)
    assert any(t < 0 for t in eng.kv_tokens)
    events = list(session.respond([{"role": "user", "content": "hi"}], grammar=FORCED))
    assert "".join(e.text for e in events if isinstance(e, AnswerText)) == "a red square"
    assert all(t >= 0 for t in eng.kv_tokens)


def test_stop_strings_apply_after_an_image(loaded, vision_dir) -> None:
    eng, proj = loaded
    session = ChatSession(eng, settings(stop=["square"], max_tokens=30), projector=proj)
    assert answer(session, "Describe", [image(vision_dir, "red.png")], grammar=FORCED) == "a red "
    assert session.last_turn.stats.stop_reason == "stop"


def test_cancel_before_encoding_leaves_the_engine_usable(loaded, vision_dir) -> None:
    eng, proj = loaded
    session = ChatSession(eng, settings(max_tokens=30), projector=proj)
    red = [image(vision_dir, "red.png")]
    events = list(session.send("Describe", images=red, cancel=lambda: True))
    assert isinstance(events[-1], Stats) and events[-1].stop_reason == "cancelled"
    assert answer(session, "Describe", [image(vision_dir, "red.png")], grammar=FORCED) == (
        "a red square"
    )


def test_ctrl_c_during_image_encoding_clears_the_cache(loaded, vision_dir) -> None:
    """A KeyboardInterrupt landing between two images leaves no half-evaluated prompt."""
    eng, proj = loaded
    red, blue = image(vision_dir, "red.png"), image(vision_dir, "blue.png")
    prompt = f"user {vision.MARKER} and {vision.MARKER} compare\nassistant\n"
    calls = []

    def interrupt() -> bool:
        calls.append(1)
        if len(calls) == 3:  # after the first image
            raise KeyboardInterrupt
        return False

    with pytest.raises(KeyboardInterrupt):
        proj.prefill(prompt, [red, blue], cancel=interrupt)
    assert eng.kv_tokens == []
    tokens = proj.prefill(prompt, [red, blue])
    assert proj.stats.encoded == 2
    events = list(eng.generate(tokens, settings(max_tokens=20), grammar=FORCED))
    assert "".join(e.text for e in events if isinstance(e, TextEvent)) == "a red square"


def test_text_only_model_given_an_image_names_the_model(tiny_model: Path, vision_dir) -> None:
    with open_engine(tiny_model, settings()) as eng:
        session = ChatSession(eng, settings())
        with pytest.raises(UsageError, match="text-only model"):
            list(session.send("hi", images=[image(vision_dir, "red.png")]))


def test_mismatched_projector_is_a_clear_error(loaded, vision_dir) -> None:
    eng, _ = loaded
    with pytest.raises(InvalidModelError, match=r"does not match.*48.*embedding size is 64"):
        vision.Projector(eng, vision_dir.parent / "wrong-width-mmproj.gguf")


def test_a_text_model_is_not_a_projector(loaded, vision_model) -> None:
    eng, _ = loaded
    with pytest.raises(InvalidModelError, match="not a vision projector"):
        vision.Projector(eng, vision_model)


def test_undecodable_image_is_a_usage_error(loaded) -> None:
    _, proj = loaded
    data = png_bytes(64, 64)
    broken = images.from_bytes(data[: len(data) // 2], "cut.png")
    with pytest.raises(UsageError, match="could not be decoded"):
        proj.prefill(f"{vision.MARKER} hi\n", [broken])


# -- images: checked before llama.cpp sees them -----------------------------------------


def test_image_headers() -> None:
    assert images.sniff(png_bytes(3, 2)) == ("png", 3, 2)
    assert images.sniff(b"GIF89a\x05\x00\x07\x00" + b"\0" * 10) == ("gif", 5, 7)
    jpeg = b"\xff\xd8\xff\xe0\x00\x04ab\xff\xc0\x00\x11\x08\x00\x20\x00\x40\x03" + b"\0" * 9
    assert images.sniff(jpeg) == ("jpeg", 64, 32)
    bmp = b"BM" + b"\0" * 16 + (9).to_bytes(4, "little") + (-4).to_bytes(4, "little", signed=True)
    assert images.sniff(bmp) == ("bmp", 9, 4)
    frame = png_bytes(37, 23)
    assert images.sniff(pillow_bytes([frame], "WEBP")) == ("webp", 37, 23)  # lossy: VP8
    assert images.sniff(pillow_bytes([frame], "WEBP", lossless=True)) == ("webp", 37, 23)  # VP8L
    assert images.sniff(pillow_bytes([frame, frame], "WEBP")) == ("webp", 37, 23)  # VP8X


def test_webp_is_converted_to_png_for_the_decoder() -> None:
    import warnings

    data = pillow_bytes([png_bytes(20, 10)], "WEBP")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        image = images.from_bytes(data, "a.webp")
    assert image.decodable.startswith(b"\x89PNG") and images.sniff(image.decodable)[1:] == (20, 10)
    assert image.data == data  # the file as it was: its sha256 is what conversations keep
    assert image.describe().startswith("a.webp (WEBP 20×10")
    png = images.from_bytes(png_bytes(4, 4), "b.png")
    assert png.decodable is png.data  # stb_image reads PNG itself


def _webp_header(width: int, height: int) -> bytes:
    """An extended WebP (VP8X) that claims ``width`` × ``height`` and stops there."""
    body = b"\0" * 4 + (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    return b"RIFF" + (4 + 8 + len(body)).to_bytes(4, "little") + b"WEBPVP8X" + b"\n\0\0\0" + body


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"hello, world", "not an image"),
        (b"\x89PNG\r\n\x1a\n\0\0", "truncated"),
        (b"\xff\xd8\xff\xe0\x00\x10JFIF", "truncated"),
        (png_header_only(10_000, 8_000), "80 megapixels"),
        (b"RIFF\0\0\0\0WEBPVP8 ", "truncated"),
        (_webp_header(10_000, 8_000), "80 megapixels"),  # refused before Pillow decodes it
        (_webp_header(100, 100), "could not be decoded"),
    ],
)
def test_bad_images_are_refused(data: bytes, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        images.from_bytes(data, "x")


def test_remote_images_are_refused_unless_allowed() -> None:
    with pytest.raises(UsageError, match="works offline"):
        images.read_image("https://example.com/cat.png")
    with pytest.raises(UsageError, match="works offline"):
        images.from_data_url("http://example.com/cat.png")


def test_data_urls() -> None:
    import base64

    url = "data:image/png;base64," + base64.b64encode(png_bytes(4, 4)).decode()
    assert images.from_data_url(url).width == 4
    with pytest.raises(UsageError, match="not an image"):
        images.from_data_url("data:image/png;base64," + base64.b64encode(b"nope").decode())


# -- the command line -------------------------------------------------------------------


def localllm(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "localllm", *args],
        input=stdin,
        capture_output=True,
        timeout=120,
        env=os.environ.copy(),
    )


def test_run_with_an_image(vision_model, vision_dir) -> None:
    proc = localllm(
        "run", "-m", str(vision_model), "--image", str(vision_dir / "red.png"),
        "Describe", "-n", "6", "--ctx", "512", "--stats", "--temperature", "0",
    )  # fmt: skip
    err = proc.stderr.decode()
    assert proc.returncode == 0, err
    assert "16 image tok" in err and "encoded 1" in err
    assert proc.stdout


def test_run_with_a_webp_answers_as_the_same_png(vision_model, vision_dir) -> None:
    def run(name: str) -> bytes:
        proc = localllm(
            "run", "-m", str(vision_model), "--image", str(vision_dir / name),
            "Describe", "-n", "8", "--ctx", "512", "--temperature", "0",
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr.decode()
        return proc.stdout

    red = run("red.webp")
    assert red == run("red.png")
    assert red != run("blue.webp")


def test_run_json_lists_images_and_reads_one_from_stdin(vision_model, vision_dir) -> None:
    data = (vision_dir / "blue.png").read_bytes()
    proc = localllm(
        "run", "-m", str(vision_model), "--image", "-", "--image", str(vision_dir / "red.png"),
        "Compare", "-n", "4", "--ctx", "512", "--json",
        stdin=data,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr.decode()
    payload = json.loads(proc.stdout)
    assert [i["name"] for i in payload["images"]] == ["the image on stdin", "red.png"]
    assert payload["image_stats"]["image_tokens"] == 32
    assert payload["stats"]["prompt_tokens"] > 32


@pytest.mark.parametrize(
    ("extra", "code", "message"),
    [
        (["--image", "{dir}/missing.png"], 2, "image not found"),
        (["--image", "https://example.com/a.png"], 2, "--allow-remote"),
        (["--image", "{model}"], 2, "not an image"),
        (["--image", "{dir}/cut.webp"], 2, "cut.webp could not be decoded"),
        (["--image", "{dir}/red.png", "--mmproj", "{dir}/../wrong-width-mmproj.gguf"], 3,
         "does not match"),
        (["--image", "{dir}/red.png", "--mmproj", "{dir}/none.gguf"], 3,
         "projector file not found"),
        (["--image", "-"], 2, "prompt must be an argument"),
    ],
)  # fmt: skip
def test_run_image_errors(vision_model, vision_dir, extra, code, message) -> None:
    args = [a.format(dir=vision_dir, model=vision_model) for a in extra]
    prompt = [] if "-" in args else ["Describe"]
    proc = localllm("run", "-m", str(vision_model), *args, *prompt, "-n", "2", "--ctx", "512")
    err = proc.stderr.decode()
    assert proc.returncode == code, err
    assert message in err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_run_text_only_model_with_an_image(tiny_model: Path, vision_dir) -> None:
    proc = localllm("run", "-m", str(tiny_model), "--image", str(vision_dir / "red.png"), "hi")
    err = proc.stderr.decode()
    assert proc.returncode == 2
    assert f"{tiny_model.name} is a text-only model" in err
