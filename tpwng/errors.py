"""The error types that carry a clear one-line message for the user."""

from __future__ import annotations

from tpwng.clip_backbone import ClipWeightsError
from tpwng.files import WriteError
from tpwng.store import StoreError
from tpwng.video import VideoError


class CheckpointError(RuntimeError):
    """A model checkpoint is unreadable or was made for another configuration."""


def _expected() -> tuple[type[BaseException], ...]:
    from tpwng.config import ConfigError
    from tpwng.datasets import DatasetError

    return (ClipWeightsError, StoreError, VideoError, CheckpointError, ConfigError,
            DatasetError, WriteError, FileNotFoundError)


EXPECTED_ERRORS = _expected()
