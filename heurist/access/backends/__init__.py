"""Broker-access backends: RabbitMQ (management HTTP API) and the embedded SQLite broker (no users)."""
