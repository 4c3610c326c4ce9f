

"""Per-machine pipeline selection on real normal clips (the shared DCASE recordings) with the real int8 extractor."""

from __future__ import annotations

from humwatch.agent.model.bundle import DetectorEntry
from humwatch.calibration.candidates import PARTS


def test_a_bundle_without_names_names_its_readings_as_calibration_does():
    for part in PARTS.values():
        entry = DetectorEntry(part.file, part.kind, part.feature_source, window_centre=0.0 if part.two_sided else None)
        assert entry.name == part.name
