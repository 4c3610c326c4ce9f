"""Known answers: convert stores them beside each model; the agent, `score` and `calibrate` refuse a runtime that
computes other features (here: a stored expected feature vector edited to be wrong) with one line and exit 2."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from humwatch.agent.errors import RuntimeMismatchError
from humwatch.agent.model.extractor import Extractor
from humwatch.agent.model.known_answers import TOLERANCE, known_answers_path


def test_convert_stores_known_answers_that_this_runtime_reproduces(converted_squeezenet):
    for precision, model in converted_squeezenet.items():
        with np.load(known_answers_path(model)) as known:
            assert known["images"].shape == (4, 64, 64, 3) and known["features"].shape == (4, 2048)
        assert Extractor(model).known_answer_difference <= TOLERANCE[precision] / 10


@pytest.fixture
def model_copy(squeezenet_int8, tmp_path):
    folder = tmp_path / "models"
    folder.mkdir()
    for path in squeezenet_int8.parent.glob(f"{squeezenet_int8.name}*"):
        shutil.copy(path, folder / path.name)
    return folder / squeezenet_int8.name


def break_one_known_answer(model, by: float = 0.5) -> None:
    """Edit the stored expected features: one vector off by `by` of the features' scale in one element."""
    path = known_answers_path(model)
    with np.load(path) as known:
        images, features = known["images"], known["features"].copy()
    features[1, 7] += by * np.abs(features).max()
    np.savez(path, images=images, features=features)


def test_a_wrong_known_answer_refuses_calibrate_score_and_the_agent(model_copy, calibration_audio, tmp_path, capsys):
    from humwatch.cli import main

    bundle = tmp_path / "bundle"
    clips = sorted(calibration_audio.glob("*.wav"))[:40]
    audio = tmp_path / "audio"
    audio.mkdir()
    for clip in clips:
        (audio / clip.name).symlink_to(clip)
    assert main(["calibrate", str(audio), "--model", str(model_copy), "--out", str(bundle), "--machine", "ka",
                 "--preset", "paper"]) == 0
    config = tmp_path / "ka.toml"
    config.write_text(f'[machine]\nname = "ka"\n[model]\nbundle = "{bundle}"\n[audio]\nsource = "file"\n'
                      f'file = "{clips[0]}"\nrealtime = false\n[mqtt]\nhost = "127.0.0.1"\nport = 1\n'
                      f'[state]\ndir = "{tmp_path / "state"}"\n')
    capsys.readouterr()

    break_one_known_answer(model_copy)
    break_one_known_answer(bundle / "extractor.tflite")  # the bundle carries its own copy of the model
    with pytest.raises(RuntimeMismatchError):
        Extractor(model_copy)
    for command in (["score", "--bundle", str(bundle), str(clips[0])],
                    ["calibrate", str(audio), "--model", str(model_copy), "--out", str(tmp_path / "b2"),
                     "--machine", "ka", "--preset", "paper"],
                    ["run", "--config", str(config)]):
        assert main(command) == 2, command
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"humwatch {command[0]}: error: "), err
        assert (".tflite: the TFLite runtime (ai_edge_litert) computes features that differ from the model's known "
                "answers by 0.5 of their scale (tolerance 0.25); refusing") in err[0], err
    assert not (tmp_path / "b2").exists() and not (tmp_path / "state" / "outbox.sqlite").exists()
