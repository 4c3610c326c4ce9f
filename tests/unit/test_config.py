"""The agent's TOML config: defaults, relative paths, and every problem named by its dotted key at once."""
import pathlib
import subprocess
import sys

import pytest

from humwatch.agent.config import AlarmConfig, SensorConfig, load_config, parse_config
from humwatch.agent.errors import ConfigError

MINIMAL = '[machine]\nname = "pump-1"\n[model]\nbundle = "bundles/pump-1"\n'


def write(tmp_path: pathlib.Path, text: str) -> pathlib.Path:
    path = tmp_path / "humwatch.toml"
    path.write_text(text)
    return path


def errors_of(tmp_path, text) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    return str(info.value).splitlines()


def test_minimal_config_gets_documented_defaults_and_paths_relative_to_the_file(tmp_path):
    config = load_config(write(tmp_path, MINIMAL))
    assert config.machine.name == "pump-1"
    assert config.model.bundle == tmp_path / "bundles" / "pump-1"
    assert config.model.threads == 1
    assert (config.alarm.raise_after, config.alarm.clear_after) == (3, 10)
    assert config.audio.source == "device" and config.audio.rate == 16000 and config.audio.channel == 0
    assert config.sensor == SensorConfig()
    assert config.mqtt.host == "localhost" and config.mqtt.resolved_port == 1883
    assert config.state.outbox.name == "outbox.sqlite"


def test_full_config_is_read_into_typed_fields(tmp_path):
    (tmp_path / "replay.wav").write_bytes(b"")  # the replay file must exist; reading it is the capture's job
    config = load_config(write(tmp_path, MINIMAL + """
[audio]
source = "file"
file = "replay.wav"
realtime = false
channels = 8
channel = "mean"
device = "USB"
[alarm]
raise_after = 5
clear_after = 20
score_interval = 2
[sensor]
silence_dbfs = -55
[mqtt]
host = "broker.local"
port = 1884
prefix = "plant/line3"
[state]
dir = "state"
"""))
    assert config.audio.file == tmp_path / "replay.wav" and config.audio.realtime is False
    assert config.audio.channel == "mean" and config.audio.device == "USB"
    assert config.alarm == AlarmConfig(raise_after=5, clear_after=20, score_interval=2.0)
    assert config.sensor.silence_dbfs == -55.0 and isinstance(config.sensor.silence_dbfs, float)
    assert (config.mqtt.host, config.mqtt.port, config.mqtt.prefix) == ("broker.local", 1884, "plant/line3")
    assert config.state.dir == tmp_path / "state"


def test_every_problem_is_reported_at_once_with_its_dotted_name(tmp_path):
    lines = errors_of(tmp_path, """
[machine]
name = "pump/1"
[audio]
rate = "fast"
colour = "blue"
[model]
threads = 0
[alarm]
raise_after = 0
clear_after = 2.5
[sensor]
clipping_fraction = 1.5
[extra]
""")
    path = str(tmp_path / "humwatch.toml")
    assert all(line.startswith(path + ": ") for line in lines)
    keys = {line[len(path) + 2:].split(":")[0] for line in lines}
    assert keys == {"machine.name", "audio.rate", "audio.colour", "model.bundle", "model.threads",
                    "alarm.raise_after", "alarm.clear_after", "sensor.clipping_fraction", "extra"}
    assert any("audio.rate: must be an integer, not 'fast'" in line for line in lines)
    assert any("model.bundle: missing (required)" in line for line in lines)
    assert any("audio.colour: unknown key" in line for line in lines)


def test_cross_field_rules(tmp_path):
    lines = errors_of(tmp_path, MINIMAL + '[audio]\nsource = "file"\nchannels = 2\nchannel = 2\n')
    assert any(line.endswith("audio.file: required when source = 'file'") for line in lines)
    assert any("audio.channel: must be below channels (2)" in line for line in lines)
    missing = errors_of(tmp_path, MINIMAL + '[audio]\nsource = "file"\nfile = "replay.wav"\n')
    assert missing == [f"{tmp_path / 'humwatch.toml'}: audio.file: no such file {tmp_path / 'replay.wav'}"]


def test_missing_sections_and_wrong_source_choice(tmp_path):
    lines = errors_of(tmp_path, '[audio]\nsource = "radio"\n')
    text = "\n".join(lines)
    assert "machine: missing section" in text and "model: missing section" in text
    assert "audio.source: must be 'device' or 'file', not 'radio'" in text


def test_mqtt_section_is_checked_by_the_mqtt_settings(tmp_path):
    lines = errors_of(tmp_path, MINIMAL + '[mqtt]\nport = 70000\n')
    assert len(lines) == 1 and "mqtt.port" in lines[0]
    lines = errors_of(tmp_path, MINIMAL + '[audio]\nrate = 1\n[mqtt]\nport = 0\nkeepalive = -5\nhsot = "x"\n')
    assert [line.split(": ")[1] for line in lines] == ["audio.rate", "mqtt.hsot", "mqtt.port", "mqtt.keepalive"]
    lines = errors_of(tmp_path, MINIMAL + '[mqtt.tls]\nca_file = "missing-ca.pem"\n')
    assert len(lines) == 1 and "mqtt.tls.ca_file" in lines[0] and "missing-ca.pem" in lines[0]


def test_bad_toml_and_missing_file_are_one_line(tmp_path):
    with pytest.raises(ConfigError, match="not valid TOML") as info:
        load_config(write(tmp_path, "[machine\n"))
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "absent.toml")


def test_booleans_are_not_numbers(tmp_path):
    with pytest.raises(ConfigError, match=r"model.threads: must be an integer, not True"):
        parse_config({"machine": {"name": "m"}, "model": {"bundle": "b", "threads": True}}, tmp_path)


def test_check_config_command(tmp_path):
    good = write(tmp_path, MINIMAL)
    done = subprocess.run([sys.executable, "-m", "humwatch", "check-config", str(good)], capture_output=True,
                          text=True)
    assert done.returncode == 0 and "OK" in done.stdout and "pump-1" in done.stdout
    # no bundle yet: the file is fine, and the note says what the agent will need
    assert done.stderr == (f"{good}: note: model.bundle: {tmp_path / 'bundles' / 'pump-1'}: no bundle here (run "
                           f"`humwatch calibrate` first); `humwatch run` needs one (`humwatch calibrate --config "
                           f"{good}`)\n")
    bad = tmp_path / "bad.toml"
    bad.write_text('[machine]\nname = "m"\n[model]\nbundle = "b"\nthreads = "two"\n[alarm]\nclear_after = 0\n')
    done = subprocess.run([sys.executable, "-m", "humwatch", "check-config", str(bad)], capture_output=True, text=True)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 2 and "model.threads" in lines[0] and "alarm.clear_after" in lines[1]


def test_the_reference_needs_no_file_and_names_every_key():
    done = subprocess.run([sys.executable, "-m", "humwatch", "check-config", "--reference"], capture_output=True,
                          text=True)
    assert done.returncode == 0 and "| `clipping_seconds` | a number | `2.0` | span of audio over which" in done.stdout
    assert "| `keepalive` | an integer | `60` |" in done.stdout
    assert "### `[mqtt.tls]`" in done.stdout and "| `ca_file` | a path | unset |" in done.stdout
    done = subprocess.run([sys.executable, "-m", "humwatch", "check-config"], capture_output=True, text=True)
    assert done.returncode == 2 and "give the configuration FILE to check" in done.stderr


def test_the_shipped_example_config_is_valid():
    example = pathlib.Path(__file__).resolve().parents[2] / "agent" / "service" / "humwatch.example.toml"
    config = load_config(example)
    assert config.alarm == AlarmConfig() and config.sensor == SensorConfig()
