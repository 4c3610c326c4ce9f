"""The running agent: capture, alarm and sensor-health policy, the service loop, systemd integration."""
