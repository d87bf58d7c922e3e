"""Scoring the test set: stored image features -> temporal module -> classifier, whole videos."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from tpwng.data.manifest import read_manifest
from tpwng.evaluate.scores_file import write_scores_file
from tpwng.features.store import FeatureStore, pick_crop
from tpwng.grid import expand_to_frames
from tpwng.model.class_probs import class_probabilities
from tpwng.model.tpwng import TPWNG
from tpwng.scoring.scorer import load_scorer
from tpwng.train.loop import TrainSettings

log = logging.getLogger(__name__)


@torch.no_grad()
def score_features(model: TPWNG, feats: np.ndarray, device="cpu") -> np.ndarray:
    """Snippet scores of one video from its features [T, D]."""
    x = torch.from_numpy(np.ascontiguousarray(feats, dtype=np.float32))[None].to(device)
    mask = torch.ones(x.shape[:2], dtype=torch.bool, device=device)
    return model.score(x, mask)[0].float().cpu().numpy()


def snippet_class_probs(feats: np.ndarray, scores: np.ndarray, text: torch.Tensor,
                        logit_scale: float) -> np.ndarray:
    """Class probabilities ``[T, k]`` of one video from its features ``[T, D]`` and its
    already computed anomaly scores ``η`` ``[T]``, with the class text embeddings ``[k, D]``
    (`tpwng.model.class_probs`): neither the text tower nor the temporal module runs again."""
    return class_probabilities(torch.from_numpy(np.ascontiguousarray(feats, dtype=np.float32)),
                               text, logit_scale,
                               torch.from_numpy(np.asarray(scores, dtype=np.float32))).numpy()


def score_test_set(settings: dict, manifest: Path, features: Path, model_path: Path,
                   out: Path) -> int:
    """Score every test video of the manifest into the scores file ``out``
    (`tpwng.evaluate.scores_file`), class probabilities from the class text embeddings
    stored in the checkpoint."""
    train = TrainSettings.from_settings(settings)  # device and threads: schema defaults
    device = train.device
    torch.set_num_threads(train.threads)
    scorer = load_scorer(model_path, device, settings=settings, images=False)
    stride = int(settings["extraction"]["stride"])
    crop = int(settings["train"]["test_crop"])
    rows = [r for r in read_manifest(manifest) if r.split == "test"]
    with FeatureStore(features) as store:
        from tpwng.features.provenance import expected_store_provenance

        store.check_compatible(expected_store_provenance(settings))
        with write_scores_file(out, dataset=settings["name"], model=model_path,
                               meta=scorer.meta, stride=stride, test_crop=crop,
                               order=[r.video_id for r in rows],
                               logit_scale=scorer.logit_scale) as written:
            for r in tqdm(rows, desc=f"score {settings['name']}", file=sys.stderr,
                          unit="video"):
                feats = pick_crop(store.get(r.video_id), crop)
                s = score_features(scorer.model, feats, scorer.device)
                written.add(r.video_id, s, expand_to_frames(s, r.frames, stride),
                            snippet_class_probs(feats, s, scorer.text, scorer.logit_scale))
    log.info("%s: %d test videos scored", out, len(rows))
    return len(rows)
