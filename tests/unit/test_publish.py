"""MQTT settings are validated field by field before any connection is tried."""


import pytest

from humwatch.agent.config import MqttConfig, read_section
from humwatch.agent.errors import ConfigError
from humwatch.agent.transport.publish import MqttPublisher


def problems_of(table) -> list[str]:
    """The one-line problems of an `[mqtt]` table, as the agent reports them."""
    settings, problems = read_section("mqtt", table)
    assert (settings is None) == bool(problems)
    return [str(p) for p in problems]


@pytest.mark.parametrize("field, content, message", [
    ("ca_file", None, "mqtt.tls.ca_file: no such file {path}"),
    ("ca_file", "not a certificate\n", "mqtt.tls.ca_file: not a PEM CA certificate file {path}"),
    ("certfile", "not a certificate\n", "mqtt.tls.certfile: cannot load the client certificate {path}"),
])
def test_bad_tls_files_give_one_line_naming_the_field(tmp_path, field, content, message):
    path = tmp_path / "file.pem"
    if content is not None:
        path.write_text(content)
    [problem] = problems_of({"host": "broker", "tls": {field: str(path)}})
    assert problem.startswith(message.format(path=path))


def test_settings_are_checked_field_by_field():
    for table, message in [({"port": 70000}, "mqtt.port: must be 1..65535"),
                           ({"port": "1883"}, "mqtt.port: must be an integer"),
                           ({"discovery": "yes"}, "mqtt.discovery: must be true or false"),
                           ({"prefix": "plant/#"}, "mqtt.prefix: must be a topic without wildcards"),
                           ({"password": "x"}, "mqtt.username: is needed with a password"),
                           ({"alarm_qos": 0}, "mqtt.alarm_qos: must be 1 or 2"),
                           ({"hostname": "x"}, "mqtt.hostname: unknown key"),
                           ({"tls": {"verify": False}}, "mqtt.tls.verify: unknown key")]:
        [problem] = problems_of(table)
        assert problem.startswith(message)
    settings, _ = read_section("mqtt", {"host": "broker", "tls": {"insecure": True}})
    assert settings.tls.insecure and settings.resolved_port == 8883
    assert MqttConfig().resolved_port == 1883
    with pytest.raises(ConfigError, match="machine: must be a name"):
        MqttPublisher(MqttConfig(), None, "pump/1")


def test_every_problem_of_the_table_is_reported_at_once():
    table = {"port": 0, "keepalive": -5, "alarm_qos": 7, "hsot": "x", "discovery": "yes", "password": "p",
             "tls": {"verify": False}}
    lines = problems_of(table)
    assert sorted(line.split(":")[0] for line in lines) == ["mqtt.alarm_qos", "mqtt.discovery", "mqtt.hsot",
                                                            "mqtt.keepalive", "mqtt.port", "mqtt.tls.verify",
                                                            "mqtt.username"]
    assert "mqtt.port: must be 1..65535, not 0" in lines and "mqtt.discovery: must be true or false, not 'yes'" in lines
