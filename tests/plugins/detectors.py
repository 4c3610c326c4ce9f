"""Assertions shared by the detector tests: the board's scores against scikit-learn's, and refusals."""
from __future__ import annotations

import numpy as np
import pytest

from humwatch.agent.errors import ModelError
from humwatch.calibration.workstation_scorers import load_workstation_detector as load_detector


def assert_equal_scores(ours: np.ndarray, reference: np.ndarray, float32_projection: bool = False) -> None:
    """Equal to 1e-6 relative, with an absolute floor of 1e-9 of the scores' scale for scores crossing zero.

    A PCA detector projects in float32 on the board (one product per patch, half the memory traffic): equal to
    float32 precision then, 1e-5 relative with a floor of 1e-6 of the scale.
    """
    rtol, floor = (1e-5, 1e-6) if float32_projection else (1e-6, 1e-9)
    np.testing.assert_allclose(ours, reference, rtol=rtol, atol=floor * np.abs(reference).max())


def assert_refused(path, match: str, **kwargs) -> None:
    with pytest.raises(ModelError) as caught:
        load_detector(path, **kwargs)
    message = str(caught.value)
    assert str(path) in message and "\n" not in message
    assert match in message, message
