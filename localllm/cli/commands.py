"""Imports every command module so each registers itself on the app."""

from localllm.cli import bench, chat, doctor, inspect, models, profile, run  # noqa: F401
