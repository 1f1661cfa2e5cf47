"""Screens of the chat app: the chat itself and the modal pickers and editors."""
