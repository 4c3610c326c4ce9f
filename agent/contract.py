"""The one home of the signal and model contract shared by the agent, calibration and conversion.

Every number that must agree between the board and the workstation lives here, so that the device computes
exactly what a model was converted and quantised on.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

# Version of the front-end definition below; bump it when any computation behind these numbers changes.
FRONTEND_VERSION = 1
# Version of every file format humwatch writes (detector .npz, bundle JSON, model sidecar).
SCHEMA_VERSION = 1

SAMPLE_RATE = 16_000
N_FFT = 1024
SPECTRUM_BINS = N_FFT // 2 + 1  # STFT power bins, 0 Hz to the Nyquist frequency, 15.6 Hz apart
HOP_LENGTH = 256
N_MELS = 64
FMIN_HZ = 0.0
FMAX_HZ = 8000.0
# power_to_db(S, ref=1.0, amin=1e-10, top_db=None): top_db is left out because it depends on the whole clip's
# maximum, which a stream never knows.
DB_AMIN = 1e-10

PATCH_FRAMES = 64
PATCH_HOP_FRAMES = 32
PATCH_HOP_SAMPLES = PATCH_HOP_FRAMES * HOP_LENGTH
PATCH_SECONDS = PATCH_HOP_SAMPLES / SAMPLE_RATE  # a new patch every 0.512 s
# Stream samples before the first patch is complete (1.04 s): frame j is centred on sample j·hop (librosa's
# center=True) and its window reaches N_FFT/2 beyond.
FIRST_PATCH_SAMPLES = (PATCH_FRAMES - 1) * HOP_LENGTH + N_FFT // 2
WINDOW_PATCHES = 18  # patches in a 10 s window, as the paper mean-pools them
# Stream samples of one window (9.7 s), from its first sample to the end of its last patch.
WINDOW_SAMPLES = (WINDOW_PATCHES - 1) * PATCH_HOP_SAMPLES + FIRST_PATCH_SAMPLES

# The model's input is the 64x64 viridis image as uint8 RGB (rows: high to low frequency, columns: time).
# Its first ops resize it to 224x224 (bilinear) and apply ImageNet normalisation.
IMAGE_SHAPE = (N_MELS, PATCH_FRAMES, 3)
MODEL_IMAGE_SIZE = 224
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

SCALINGS = ("minmax", "fixed")


@dataclass(frozen=True)
class FrontEndParams:
    """What turns samples into model images; recorded in every model sidecar and bundle."""

    scaling: str = "minmax"  # "minmax": per patch, as matplotlib would; "fixed": the dB window below
    db_low: float = -100.0
    db_high: float = 0.0

    def __post_init__(self) -> None:
        if self.scaling not in SCALINGS:
            raise ValueError(f"scaling must be one of {SCALINGS}, not {self.scaling!r}")
        if self.scaling == "fixed" and not self.db_high > self.db_low:
            raise ValueError(f"db_high ({self.db_high}) must be above db_low ({self.db_low})")

    def to_dict(self) -> dict:
        return {"version": FRONTEND_VERSION, **signal_contract(), **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict) -> "FrontEndParams":
        """Rebuild from a recorded dict, refusing one made by a different signal contract."""
        mismatched = {k: (data.get(k), v) for k, v in signal_contract().items() if data.get(k) != v}
        if data.get("version") != FRONTEND_VERSION:
            mismatched["version"] = (data.get("version"), FRONTEND_VERSION)
        if mismatched:
            detail = ", ".join(f"{k}={got!r} (expected {want!r})" for k, (got, want) in sorted(mismatched.items()))
            raise ValueError(f"front-end parameters do not match this humwatch: {detail}")
        return cls(scaling=data.get("scaling", "minmax"), db_low=float(data.get("db_low", -100.0)),
                   db_high=float(data.get("db_high", 0.0)))


def signal_contract() -> dict:
    """The fixed part of the front end: every model and bundle must have been made with exactly these."""
    return {
        "sample_rate": SAMPLE_RATE,
        "n_fft": N_FFT,
        "hop_length": HOP_LENGTH,
        "n_mels": N_MELS,
        "fmin_hz": FMIN_HZ,
        "fmax_hz": FMAX_HZ,
        "mel_scale": "slaney",
        "window": "hann-periodic",
        "patch_frames": PATCH_FRAMES,
        "patch_hop_frames": PATCH_HOP_FRAMES,
        "image_shape": list(IMAGE_SHAPE),
        "model_image_size": MODEL_IMAGE_SIZE,
        "imagenet_mean": list(IMAGENET_MEAN),
        "imagenet_std": list(IMAGENET_STD),
    }


def logmel_extractor_sha256() -> str:
    """The identity of the frame-level log-Mel 'extractor' (no network: the Mel frames themselves).

    Recorded in detectors fitted on Mel frames, in place of a TFLite model's sha256, so such a detector is refused
    by a front end with another signal contract.
    """
    import hashlib
    import json

    return hashlib.sha256(("logmel-frames:" + json.dumps(signal_contract(), sort_keys=True)).encode()).hexdigest()
