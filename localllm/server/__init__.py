"""The HTTP skin: OpenAI- and Ollama-compatible endpoints over the same sessions the CLI uses.

Nothing here is imported by ``localllm --help``; starlette and uvicorn load inside
:func:`localllm.server.app.build_app` and :func:`localllm.server.app.serve`.
"""
