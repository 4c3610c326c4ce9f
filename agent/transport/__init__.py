"""How alarms leave the board: the durable outbox, MQTT, Home Assistant discovery, and `listen`."""
