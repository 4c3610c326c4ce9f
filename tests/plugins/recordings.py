"""The shared real recordings the calibration tests use: DCASE 2020 slider id_00, 75 normal clips and one
anomalous clip (../shared/audio/dcase2020-id00)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from humwatch.agent.model.pipeline import PatchScore, Pipeline

CALIBRATION_CLIPS = 40  # of the 75 normal clips; the rest are normal sound the calibration never heard


@pytest.fixture(scope="session")
def dcase(shared_dir) -> Path:
    return shared_dir / "audio" / "dcase2020-id00"


@pytest.fixture(scope="session")
def normal_paths(dcase) -> list[Path]:
    return sorted((dcase / "train").glob("normal_id_00_*.wav"))


def windows(pipeline: Pipeline, samples: np.ndarray) -> list[PatchScore]:
    """A recording's full windows as the agent streams it (score and each detector's reading)."""
    pipeline.reset()
    return [s for s in pipeline.push(samples) if s.window_score is not None]


def window_scores(pipeline: Pipeline, samples: np.ndarray) -> np.ndarray:
    return np.array([s.window_score for s in windows(pipeline, samples)])
