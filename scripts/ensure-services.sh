#!/usr/bin/env bash
# Make sure PostgreSQL and RabbitMQ (with its management API) answer on 127.0.0.1; start them (as this
# machine's image does) if not.
set -u

up() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_for() {
  local name=$1 port=$2
  for _ in $(seq 1 60); do up "$port" && { echo "$name is up on port $port"; return 0; }; sleep 1; done
  echo "error: $name did not come up on 127.0.0.1:$port" >&2
  return 1
}

if ! up 5432; then
  echo "starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
fi
if ! up 5672; then
  echo "starting RabbitMQ"
  rabbitmq-server -detached || true
fi
wait_for PostgreSQL 5432 && wait_for RabbitMQ 5672 || exit 1

# `docker-compose config` validates docker/compose.yaml in the tests (no Docker engine needed): Debian's
# package provides it. Only attempted where apt-get exists and we may use it; the test says what is missing.
if ! command -v docker-compose >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  echo "installing docker-compose (validates docker/compose.yaml in the tests)"
  SUDO=""; [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && SUDO="sudo -n"
  { $SUDO apt-get install -y docker-compose >/dev/null 2>&1 \
    || { $SUDO apt-get update >/dev/null 2>&1 && $SUDO apt-get install -y docker-compose >/dev/null 2>&1; }; } \
    || echo "warning: could not install docker-compose; tests/test_compose.py will skip (fail under CI=true)" >&2
fi

# The management HTTP API creates and revokes per-miner broker users (heurist.access). Enabling it is
# idempotent and works on the running node; it is remembered in the node's enabled_plugins file.
if ! up 15672; then
  echo "enabling the RabbitMQ management plugin"
  rabbitmq-plugins enable rabbitmq_management >/dev/null || true
fi
wait_for "RabbitMQ management API" 15672
