"""Imports every command module so each registers itself on the app.

The order of these imports is the order of ``localllm --help``: the everyday commands first.
"""

# ruff: noqa: F401, I001
from localllm.cli import run
from localllm.cli import chat
from localllm.cli import serve
from localllm.cli import embed
from localllm.cli import models
from localllm.cli import inspect
from localllm.cli import profile
from localllm.cli import bench
from localllm.cli import doctor
from localllm.cli import worker
