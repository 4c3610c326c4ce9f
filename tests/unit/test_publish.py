"""MQTT settings are validated field by field before any connection is tried."""


import re

import pytest

from humwatch.agent.errors import ConfigError
from humwatch.agent.transport.publish import MqttPublisher, MqttSettings


@pytest.mark.parametrize("field, content, message", [
    ("ca_file", None, "mqtt.tls.ca_file: no such file {path}"),
    ("ca_file", "not a certificate\n", "mqtt.tls.ca_file: not a PEM CA certificate file {path}"),
    ("certfile", "not a certificate\n", "mqtt.tls.certfile: cannot load the client certificate {path}"),
])
def test_bad_tls_files_give_one_line_naming_the_field(tmp_path, field, content, message):
    path = tmp_path / "file.pem"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError) as error:
        MqttSettings.from_table({"host": "broker", "tls": {field: str(path)}})
    assert str(error.value).startswith(message.format(path=path)) and "\n" not in str(error.value)


def test_settings_are_checked_field_by_field():
    for table, message in [({"port": 70000}, "mqtt.port: must be 1..65535"),
                           ({"port": "1883"}, "mqtt.port: must be an integer"),
                           ({"discovery": "yes"}, "mqtt.discovery: must be true or false"),
                           ({"prefix": "plant/#"}, "mqtt.prefix: must be a topic without wildcards"),
                           ({"password": "x"}, "mqtt.username: is needed with a password"),
                           ({"alarm_qos": 0}, "mqtt.alarm_qos: must be 1 or 2"),
                           ({"hostname": "x"}, "mqtt.hostname: unknown key"),
                           ({"tls": {"verify": False}}, "mqtt.tls.verify: unknown key")]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            MqttSettings.from_table(table)
    settings = MqttSettings.from_table({"host": "broker", "tls": {"insecure": True}})
    assert settings.tls and settings.tls_insecure and settings.resolved_port == 8883
    assert MqttSettings().resolved_port == 1883
    with pytest.raises(ConfigError, match="machine: must be a name"):
        MqttPublisher(MqttSettings(), None, "pump/1")


def test_every_problem_of_the_table_is_reported_at_once():
    table = {"port": 0, "keepalive": -5, "alarm_qos": 7, "hsot": "x", "discovery": "yes", "password": "p",
             "tls": {"verify": False}}
    with pytest.raises(ConfigError) as error:
        MqttSettings.from_table(table)
    lines = str(error.value).splitlines()
    assert sorted(line.split(":")[0] for line in lines) == ["mqtt.alarm_qos", "mqtt.discovery", "mqtt.hsot",
                                                            "mqtt.keepalive", "mqtt.port", "mqtt.tls.verify",
                                                            "mqtt.username"]
    assert "mqtt.port: must be 1..65535, not 0" in lines and "mqtt.discovery: must be true or false, not 'yes'" in lines
