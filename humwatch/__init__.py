"""humwatch: listen to a machine, learn its normal sound, alarm over MQTT when it sounds wrong.

The subpackages follow where the code runs, and import only downwards:

- `humwatch.agent`        the board: signal → model → service → transport (numpy, scipy, TFLite, paho-mqtt)
- `humwatch.calibration`  the board too: fit the detectors, choose the threshold, write the bundle (+ scikit-learn)
- `humwatch.convert`      a workstation: ImageNet CNNs → TFLite feature extractors (+ tensorflow)
- `humwatch.evaluation`   a workstation: detection quality on real and synthetic recordings, peers, synthetic sound
"""
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("humwatch")
except PackageNotFoundError:  # running from a checkout that is not installed
    __version__ = "0+unknown"
