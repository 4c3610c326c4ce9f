"""The torch-free checkpoint reader and the checked download, against the shared torch file and a local server."""
from __future__ import annotations

import functools
import http.server
import pickle
import socket
import struct
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest

from humwatch.agent.durable import file_sha256
from humwatch.agent.errors import ModelError
from humwatch.convert import weights
from humwatch.convert.checkpoint import LEGACY_MAGIC, LEGACY_PROTOCOL, read_checkpoint


@pytest.fixture(scope="module")
def shared_pth(shared_dir) -> Path:
    return shared_dir / "weights" / "squeezenet1_1-imagenet.pth"


@pytest.fixture(scope="module")
def npz_state(shared_dir) -> dict[str, np.ndarray]:
    return weights.load_state_dict(shared_dir / "weights" / "squeezenet1_1-imagenet.npz")


def test_the_shared_torch_file_reads_without_torch_as_the_npz_tensors(shared_pth, npz_state, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "torch", None)  # any `import torch` would now fail
    state = weights.load_state_dict(shared_pth)
    assert state.keys() == npz_state.keys()
    for key, value in npz_state.items():
        assert state[key].dtype == np.float32
        np.testing.assert_array_equal(state[key], value)


def write_legacy(path: Path, zip_checkpoint: Path) -> Path:
    """The tensors of a zip checkpoint in torch's legacy stream layout (that of torchvision's 2017 files): the
    magic number, protocol and system-info pickles, torch's own pickle of the state dict, the storage keys, then
    each storage as an int64 element count and its bytes."""
    with zipfile.ZipFile(zip_checkpoint) as archive:
        pkl = next(n for n in archive.namelist() if n.endswith("/data.pkl"))
        prefix = pkl[:-len("data.pkl")]
        keys = sorted((n[len(prefix) + len("data/"):] for n in archive.namelist() if n.startswith(f"{prefix}data/")),
                      key=int)
        with open(path, "wb") as f:
            for header in (LEGACY_MAGIC, LEGACY_PROTOCOL, {"protocol_version": LEGACY_PROTOCOL,
                                                           "little_endian": True,
                                                           "type_sizes": {"short": 2, "int": 4, "long": 4}}):
                pickle.dump(header, f, protocol=2)
            f.write(archive.read(pkl))
            pickle.dump(keys, f, protocol=2)
            for key in keys:
                raw = archive.read(f"{prefix}data/{key}")
                f.write(struct.pack("<q", len(raw) // 4) + raw)  # every tensor of this file is float32
    return path


def test_a_legacy_layout_checkpoint_reads_as_the_same_tensors(tmp_path, shared_pth, npz_state):
    path = write_legacy(tmp_path / "squeezenet1_1-legacy.pth", shared_pth)
    assert not zipfile.is_zipfile(path)
    state = read_checkpoint(path)
    assert state.keys() == npz_state.keys()
    for key, value in npz_state.items():
        np.testing.assert_array_equal(state[key], value)


class _RunsACommand:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        import os
        return (os.system, (f"touch {self.marker}",))


def test_a_crafted_pickle_in_a_zip_checkpoint_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("evil/data.pkl", pickle.dumps({"features.0.weight": _RunsACommand(marker)}, protocol=2))
        archive.writestr("evil/byteorder", "little")
    with pytest.raises(ModelError, match=r"evil\.pth: refused: the checkpoint's pickle asks for (posix|os)\.system, "
                                         r"which is not part of a plain state dict"):
        weights.load_state_dict(path)
    assert not marker.exists()


def test_a_crafted_pickle_in_a_legacy_checkpoint_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        for header in (LEGACY_MAGIC, LEGACY_PROTOCOL, {"little_endian": True}):
            pickle.dump(header, f, protocol=2)
        pickle.dump({"w": _RunsACommand(marker)}, f, protocol=2)
    with pytest.raises(ModelError, match=r"refused: the checkpoint's pickle asks for (posix|os)\.system"):
        weights.load_state_dict(path)
    assert not marker.exists()


@pytest.mark.parametrize("content, message", [
    (b"not a checkpoint at all", "not a readable torch checkpoint"),
    (b"", "not a readable torch checkpoint"),
])
def test_a_damaged_checkpoint_is_one_model_error(tmp_path, content, message):
    path = tmp_path / "damaged.pth"
    path.write_bytes(content)
    with pytest.raises(ModelError, match=rf"damaged\.pth: {message}"):
        weights.load_state_dict(path)


def test_a_truncated_zip_checkpoint_is_one_model_error(tmp_path, shared_pth):
    path = tmp_path / "cut.pth"
    path.write_bytes(shared_pth.read_bytes()[:-200_000])
    with pytest.raises(ModelError, match=r"cut\.pth: not a readable torch checkpoint"):
        weights.load_state_dict(path)


# --- the download, from a real HTTP server on 127.0.0.1 ---------------------------------------------------------

@pytest.fixture
def weights_server(shared_pth, tmp_path):
    """Serves a folder holding the shared .pth under torchvision's hub name; yields its base URL."""
    root = tmp_path / "served"
    root.mkdir()
    (root / weights.HUB_FILES["squeezenet1_1"]).write_bytes(shared_pth.read_bytes())
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join()


def test_download_fetches_checks_and_reads_the_checkpoint(weights_server, shared_pth, npz_state, tmp_path,
                                                          monkeypatch):
    # The shared file is not torchvision's own build of these weights, so its digest is injected as a mirror's.
    monkeypatch.setenv(weights.URL_ENV, weights_server)
    monkeypatch.setenv(weights.SHA256_ENV, file_sha256(shared_pth))
    path = weights.download("squeezenet1_1", tmp_path / "hub")
    assert path == tmp_path / "hub" / "squeezenet1_1-b8a52dc0.pth"
    assert file_sha256(path) == file_sha256(shared_pth)
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temporary file left
    state = weights.load_state_dict(path)
    assert all(np.array_equal(state[k], v) for k, v in npz_state.items())


def test_download_refuses_a_file_that_is_not_the_published_one(weights_server, shared_pth, tmp_path, monkeypatch):
    monkeypatch.setenv(weights.URL_ENV, weights_server)
    monkeypatch.delenv(weights.SHA256_ENV, raising=False)
    assert file_sha256(shared_pth) != weights.HUB_SHA256["squeezenet1_1-b8a52dc0.pth"]
    with pytest.raises(ModelError, match=r"squeezenet1_1-b8a52dc0\.pth: downloaded file has sha256 [0-9a-f]{64}, "
                                         r"expected b8a52dc049b60e4b6ab68ad0df457362afab8b6304b2febdc1650a5dab4d7e7b"):
        weights.download("squeezenet1_1", tmp_path / "hub")
    assert not (tmp_path / "hub").exists() or list((tmp_path / "hub").iterdir()) == []


def test_download_while_offline_says_which_file_to_place_where(tmp_path, monkeypatch):
    with socket.socket() as probe:  # a port that nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv(weights.URL_ENV, f"http://127.0.0.1:{port}")
    monkeypatch.delenv(weights.SHA256_ENV, raising=False)
    dest = tmp_path / "hub" / "squeezenet1_1-b8a52dc0.pth"
    with pytest.raises(ModelError) as error:
        weights.download("squeezenet1_1", dest.parent)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"cannot download http://127.0.0.1:{port}/squeezenet1_1-b8a52dc0.pth (")
    assert message.endswith(f"place that file (sha256 b8a52dc049b60e4b6ab68ad0df457362afab8b6304b2febdc1650a5dab4d7e7b"
                            f") at {dest}")
