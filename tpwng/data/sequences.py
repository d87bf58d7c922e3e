"""Training sequences: capping long videos by bin averaging, padding with masks, batching."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from tpwng.grid import snippet_fractions


def bin_edges(n: int, max_len: int) -> np.ndarray:
    """Edges of `max_len` uniform bins over `n` snippets (n > max_len)."""
    return np.linspace(0, n, max_len + 1).round().astype(np.int64)


def cap_length(x: np.ndarray, max_len: int = 256) -> np.ndarray:
    """Shorten [T, ...] to at most `max_len` along axis 0 by averaging uniform bins."""
    n = x.shape[0]
    if n <= max_len:
        return x
    edges = bin_edges(n, max_len)
    sums = np.add.reduceat(x.astype(np.float64), edges[:-1], axis=0)
    counts = np.diff(edges).reshape(-1, *([1] * (x.ndim - 1)))
    return (sums / counts).astype(x.dtype)


def pad_batch(seqs: list[np.ndarray], length: int | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack [T_i, D] arrays into a zero-padded [B, T_max, D] tensor and a bool mask [B, T_max];
    ``length`` fixes T_max (at least the longest sequence)."""
    t_max = max(s.shape[0] for s in seqs)
    if length is not None:
        if length < t_max:
            raise ValueError(f"pad_batch: length {length} is shorter than a sequence ({t_max})")
        t_max = length
    d = seqs[0].shape[-1]
    x = np.zeros((len(seqs), t_max, d), dtype=np.float32)
    mask = np.zeros((len(seqs), t_max), dtype=bool)
    for i, s in enumerate(seqs):
        x[i, : len(s)] = s
        mask[i, : len(s)] = True
    return torch.from_numpy(x), torch.from_numpy(mask)


@dataclass
class TrainVideo:
    video_id: str
    features: np.ndarray  # [T <= max_len, crops, D], float16
    classes: list[str]
    frames: int  # frames of the original video
    snippets: int  # snippets before capping
    truth: np.ndarray | None = None  # per capped position 0/1 (diagnostics only)

    @property
    def normal(self) -> bool:
        return self.classes == ["normal"]


def snippet_truth(frame_labels: np.ndarray, stride: int, max_len: int) -> np.ndarray:
    """Per-snippet truth (majority of frames anomalous), then capped like the features."""
    return (cap_length(snippet_fractions(frame_labels, stride), max_len) >= 0.5).astype(np.uint8)


def epoch_batches(n_normal: int, n_anomalous: int, b_normal: int, b_anomalous: int,
                  rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray]]:
    """Index batches for one epoch: every video of the larger group once, the other cycled."""
    bn = min(b_normal, n_normal)
    ba = min(b_anomalous, n_anomalous)
    steps = max(-(-n_normal // bn), -(-n_anomalous // ba))

    def stream(n: int, b: int) -> np.ndarray:
        need = steps * b
        reps = -(-need // n)
        return np.concatenate([rng.permutation(n) for _ in range(reps)])[:need].reshape(steps, b)

    normal = stream(n_normal, bn)
    anomalous = stream(n_anomalous, ba)
    return list(zip(normal, anomalous, strict=True))
