

"""`humwatch demo` end to end: the smoke test of the whole product (synth → calibrate → agent → MQTT → subscriber)."""




from humwatch.cli import main


def test_demo_without_a_model_says_how_to_get_one(tmp_path, capsys):
    assert main(["demo", "--model", str(tmp_path / "none.tflite")]) == 2
    assert "humwatch convert --arch squeezenet1_1" in capsys.readouterr().err
