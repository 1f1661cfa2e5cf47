"""Widgets of the chat app; each owns the messages it posts."""
