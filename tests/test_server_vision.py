"""Images over HTTP: OpenAI ``image_url`` data URLs and Ollama ``images`` reach the
projector of a tiny vision model; remote URLs and bad images are 400s."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import pytest
from ggufgen import write_tiny_gguf
from imagegen import pillow_bytes, png_bytes
from mmprojgen import write_tiny_mmproj
from serverproc import ServerProcess

FORCED = 'root ::= "a red square"'
PNG = base64.b64encode(png_bytes(64, 64)).decode()
WEBP_BYTES = pillow_bytes([png_bytes(64, 64)], "WEBP")
WEBP = base64.b64encode(WEBP_BYTES).decode()


@pytest.fixture(scope="module")
def vision_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    folder = tmp_path_factory.mktemp("vision-server")
    model = write_tiny_gguf(folder / "tiny-vlm.gguf", name="tiny-vlm")
    write_tiny_mmproj(folder / "mmproj-tiny-vlm.gguf", n_embd_text=64)
    home = tmp_path_factory.mktemp("home")
    with ServerProcess(
        "-m", str(model), "--ctx", "512", grammar=FORCED, env={"LOCALLLM_HOME": str(home)}
    ) as server:
        yield server


def chat(content: object) -> dict:
    return {"messages": [{"role": "user", "content": content}], "max_tokens": 20}


def image_part(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


def test_openai_image_url_data_part(vision_server: ServerProcess) -> None:
    parts = [{"type": "text", "text": "What is this?"}, image_part(f"data:image/png;base64,{PNG}")]
    status, body = vision_server.post("/v1/chat/completions", chat(parts))
    assert status == 200, body
    assert body["choices"][0]["message"]["content"] == "a red square"
    assert body["usage"]["prompt_tokens"] > 16  # the image's 16 positions count
    vision_server.wait_line("projector")  # stderr is read by a thread: wait for the line


def test_openai_remote_url_is_400(vision_server: ServerProcess) -> None:
    status, body = vision_server.post(
        "/v1/chat/completions", chat([image_part("https://example.com/cat.png")])
    )
    assert status == 400
    assert "--allow-remote" in body["error"]["message"]


def test_openai_bad_image_is_400(vision_server: ServerProcess) -> None:
    junk = base64.b64encode(b"not a picture").decode()
    status, body = vision_server.post(
        "/v1/chat/completions", chat([image_part(f"data:image/png;base64,{junk}")])
    )
    assert status == 400
    assert "not an image" in body["error"]["message"]
    status, _ = vision_server.post("/v1/chat/completions", chat("still alive?"))
    assert status == 200


def test_openai_webp_data_part_and_ollama_webp(vision_server: ServerProcess) -> None:
    parts = [
        {"type": "text", "text": "What is this?"},
        image_part(f"data:image/webp;base64,{WEBP}"),
    ]
    status, body = vision_server.post("/v1/chat/completions", chat(parts))
    assert status == 200, body
    assert body["choices"][0]["message"]["content"] == "a red square"
    assert body["usage"]["prompt_tokens"] > 16  # the image's 16 positions count
    status, body = vision_server.post(
        "/api/generate", {"prompt": "Describe", "images": [WEBP], "stream": False}
    )
    assert status == 200, body
    assert body["prompt_eval_count"] > 16


def test_truncated_webp_is_400(vision_server: ServerProcess) -> None:
    cut = base64.b64encode(WEBP_BYTES[: len(WEBP_BYTES) // 2]).decode()
    status, body = vision_server.post(
        "/v1/chat/completions", chat([image_part(f"data:image/webp;base64,{cut}")])
    )
    assert status == 400
    assert "could not be decoded" in body["error"]["message"]


def test_ollama_chat_and_generate_images(vision_server: ServerProcess) -> None:
    status, body = vision_server.post(
        "/api/chat",
        {
            "messages": [{"role": "user", "content": "What is this?", "images": [PNG]}],
            "stream": False,
        },
    )
    assert status == 200, body
    assert body["message"]["content"] == "a red square"
    status, body = vision_server.post(
        "/api/generate", {"prompt": "Describe", "images": [PNG], "stream": False}
    )
    assert status == 200, body
    assert body["response"] == "a red square"
    assert body["prompt_eval_count"] > 16


def test_ollama_show_lists_vision(vision_server: ServerProcess) -> None:
    status, body = vision_server.post("/api/show", {"model": "tiny-vlm"})
    assert status == 200, body
    assert "vision" in body["capabilities"]


def test_text_only_model_refuses_images(tiny_model: Path, tmp_path: Path) -> None:
    with ServerProcess("-m", str(tiny_model), env={"LOCALLLM_HOME": str(tmp_path)}) as server:
        status, body = server.post(
            "/v1/chat/completions", chat([image_part(f"data:image/png;base64,{PNG}")])
        )
    assert status == 400
    assert "text-only model" in body["error"]["message"]
