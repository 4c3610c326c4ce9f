"""The board: capture, front end, TFLite features, numpy detectors, alarms and MQTT (numpy, scipy, LiteRT, paho)."""
