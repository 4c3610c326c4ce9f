"""Finds, fetches, reads and checks ImageNet weights in torchvision's state-dict layout.

Formats: `.npz` and `.pth` (a torch checkpoint, read without torch by humwatch.convert.checkpoint). Names searched
for an architecture, in each directory in turn: `<arch>-imagenet.npz`, `<arch>-imagenet.pth`, then torchvision's
hub cache name (`resnet18-f37072fd.pth`, ...). Directories, in order: `--weights-dir`, `$HUMWATCH_WEIGHTS`,
`$HUMWATCH_SHARED/weights` (default: the `shared/weights` beside this checkout), torch's hub cache
(`$TORCH_HOME/hub/checkpoints`, default `~/.cache/torch/hub/checkpoints`).
"""
from __future__ import annotations

import logging
import os
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import numpy as np

from humwatch.agent.durable import file_sha256
from humwatch.agent.errors import ModelError
from humwatch.convert.backbones import ARCHITECTURES, expected_shapes

log = logging.getLogger(__name__)

# torchvision's official IMAGENET1K_V1 checkpoints; the 8 hex digits in each name start the file's sha256.
HUB_FILES = {
    "resnet18": "resnet18-f37072fd.pth",
    "resnet34": "resnet34-b627a593.pth",
    "squeezenet1_0": "squeezenet1_0-b66bff10.pth",
    "squeezenet1_1": "squeezenet1_1-b8a52dc0.pth",
}
# The full sha256 of a published file, where known (squeezenet1_1's: the file's size and digest as listed by two
# independent public inventories of torchvision's files); the others are checked on the name's 8 hex digits.
HUB_SHA256 = {
    "squeezenet1_1-b8a52dc0.pth": "b8a52dc049b60e4b6ab68ad0df457362afab8b6304b2febdc1650a5dab4d7e7b",
}
DOWNLOAD_URL = "https://download.pytorch.org/models/{}"
# Mirrors and tests: fetch from `$HUMWATCH_WEIGHTS_URL/<file name>` instead, checked against
# `$HUMWATCH_WEIGHTS_SHA256` when set (a mirror serving another build of the file), else the published digest.
URL_ENV = "HUMWATCH_WEIGHTS_URL"
SHA256_ENV = "HUMWATCH_WEIGHTS_SHA256"
IGNORED_KEY_SUFFIXES = (".num_batches_tracked",)


def default_shared_dir() -> Path:
    """`$HUMWATCH_SHARED`, else the `shared/` folder beside this checkout (where the project keeps its weights)."""
    env = os.environ.get("HUMWATCH_SHARED")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared"


def torch_hub_dir() -> Path:
    home = os.environ.get("TORCH_HOME") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "torch"
    return Path(home) / "hub" / "checkpoints"


def search_dirs(weights_dir: Path | None = None) -> list[Path]:
    """Where weights are looked for, first match wins."""
    dirs = [weights_dir] if weights_dir else []
    if os.environ.get("HUMWATCH_WEIGHTS"):
        dirs.append(Path(os.environ["HUMWATCH_WEIGHTS"]))
    dirs += [default_shared_dir() / "weights", torch_hub_dir()]
    return [Path(d) for d in dirs]


def candidate_names(arch: str) -> list[str]:
    return [f"{arch}-imagenet.npz", f"{arch}-imagenet.pth", HUB_FILES[arch]]


def locate_weights(arch: str, weights_dir: Path | None = None) -> Path:
    """The first weights file for `arch` in the search directories, or a ModelError saying where to get one."""
    if arch not in ARCHITECTURES:
        raise ModelError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}")
    dirs = search_dirs(weights_dir)
    for directory in dirs:
        for name in candidate_names(arch):
            if (directory / name).is_file():
                return directory / name
    url = DOWNLOAD_URL.format(HUB_FILES[arch])
    raise ModelError(
        f"no {arch} weights found (looked for {', '.join(candidate_names(arch))} in "
        f"{', '.join(str(d) for d in dirs)}); get the torchvision checkpoint from {url} into one of those "
        f"folders (or pass --download, or --weights FILE)")


def fetch(url: str, dest: Path, sha256_prefix: str) -> Path:
    """Download `url` to `dest` atomically, refusing content whose sha256 does not start with `sha256_prefix`
    (a full 64-digit digest when it is known)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
    try:
        log.info("downloading %s", url)
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
            total = int(response.headers.get("Content-Length") or 0)
            done, reported = 0, 0
            for block in iter(lambda: response.read(1 << 20), b""):
                out.write(block)
                done += len(block)
                if total and done * 10 // total > reported:
                    reported = done * 10 // total
                    log.info("  %d%% of %.1f MB", reported * 10, total / 1e6)
            out.flush()
            os.fsync(out.fileno())
        digest = file_sha256(tmp)
        if not digest.startswith(sha256_prefix):
            wanted = sha256_prefix if len(sha256_prefix) == 64 else f"one starting {sha256_prefix}"
            raise ModelError(f"{url}: downloaded file has sha256 {digest}, expected {wanted}")
        os.replace(tmp, dest)
    except (urllib.error.URLError, OSError) as exc:
        digest = sha256_prefix if len(sha256_prefix) == 64 else f"{sha256_prefix}..."
        raise ModelError(f"cannot download {url} ({getattr(exc, 'reason', exc)}); place that file (sha256 "
                         f"{digest}) at {dest}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return dest


def expected_sha256(name: str) -> str:
    """What a hub file's sha256 must be: the full digest when known, else the 8 hex digits its name carries."""
    return HUB_SHA256.get(name) or name.rsplit("-", 1)[1].removesuffix(".pth")


def download_url(name: str) -> str:
    base = os.environ.get(URL_ENV)
    return f"{base.rstrip('/')}/{name}" if base else DOWNLOAD_URL.format(name)


def download(arch: str, dest_dir: Path | None = None, sha256: str | None = None) -> Path:
    """Fetch torchvision's official checkpoint for `arch` into `dest_dir` (default: torch's hub cache), checked
    against `sha256` (default: the published digest)."""
    name = HUB_FILES[arch]
    expected = (sha256 or os.environ.get(SHA256_ENV) or expected_sha256(name)).lower()
    dest = (dest_dir or torch_hub_dir()) / name
    if dest.is_file() and file_sha256(dest).startswith(expected):
        return dest
    return fetch(download_url(name), dest, expected)


def load_state_dict(path: Path) -> dict[str, np.ndarray]:
    """The tensors of a `.npz` or torch `.pth` state dict as float32 numpy arrays, by torchvision key."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: weights file not found")
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as data:
                return {k: data[k] for k in data.files}
        except (OSError, ValueError, zipfile.BadZipFile) as exc:
            raise ModelError(f"{path}: not a readable .npz state dict ({exc})") from None
    if path.suffix in (".pth", ".pt"):
        return _load_torch(path)
    raise ModelError(f"{path}: unknown weights format {path.suffix!r}; use .npz or a torch .pth")


def _load_torch(path: Path) -> dict[str, np.ndarray]:
    from humwatch.convert.checkpoint import read_checkpoint

    return {k: v.astype(np.float32) if v.dtype.kind == "f" else v for k, v in read_checkpoint(path).items()}


def check_state_dict(arch: str, state: dict[str, np.ndarray], source: str = "weights") -> None:
    """Refuse a state dict whose keys or shapes are not exactly torchvision's `arch` (num_batches_tracked aside)."""
    want = expected_shapes(arch)
    have = {k: tuple(np.shape(v)) for k, v in state.items() if not k.endswith(IGNORED_KEY_SUFFIXES)}
    missing = sorted(set(want) - set(have))
    extra = sorted(set(have) - set(want))
    wrong = sorted(k for k in set(want) & set(have) if want[k] != have[k])
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing (first {missing[0]!r})")
    if extra:
        problems.append(f"{len(extra)} unexpected (first {extra[0]!r})")
    if wrong:
        problems.append(f"{wrong[0]!r} has shape {have[wrong[0]]}, expected {want[wrong[0]]}")
    if problems:
        raise ModelError(f"{source}: not a torchvision {arch} state dict: {'; '.join(problems)}")
