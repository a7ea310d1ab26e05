"""The hall gateway: ratings in over MQTT, stored in SQLite, acknowledged, forwarded to the province."""
