"""The error types that carry a clear one-line message for the user."""

from __future__ import annotations

from tpwng.device import DeviceCountError
from tpwng.features.clip_backbone import ClipWeightsError
from tpwng.features.store import StoreError
from tpwng.features.video import VideoError
from tpwng.files import WriteError


class CheckpointError(RuntimeError):
    """A model checkpoint is unreadable or was made for another configuration."""


def _expected() -> tuple[type[BaseException], ...]:
    from tpwng.config import ConfigError
    from tpwng.data.datasets import DatasetError
    from tpwng.evaluate import ResultsError

    return (ClipWeightsError, StoreError, VideoError, CheckpointError, ConfigError,
            DatasetError, WriteError, DeviceCountError, ResultsError, FileNotFoundError)


EXPECTED_ERRORS = _expected()
