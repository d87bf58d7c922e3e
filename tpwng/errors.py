"""Error types shared across the layers that carry a clear one-line message for the user.

Each layer's own error types live with their code (`StoreError` with the feature store,
`VideoError` with decoding, ...); the command line gathers them all (`tpwng.cli`)."""

from __future__ import annotations


class UserError(Exception):
    """An error to print as one line, without a traceback."""


class CheckpointError(RuntimeError):
    """A model checkpoint is unreadable or was made for another configuration."""
