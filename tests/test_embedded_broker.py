"""The embedded broker transport (SQLite through kombu): messages cross processes' connections, and a
worker's 2 s ``drain_events`` wait is cut short so a stopped worker notices its signal quickly."""

from __future__ import annotations

import socket
import sqlite3
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from kombu import Connection, Queue

from heurist import broker


@pytest.fixture
def url(tmp_path: Path) -> str:
    broker.register()
    return f"embedded+sqlite:///{tmp_path / 'broker.sqlite'}"


def test_a_message_crosses_connections(url: str) -> None:
    queue = Queue("vram8.tiny-sd", routing_key="vram8.tiny-sd")
    with Connection(url) as sender, Connection(url) as receiver:
        sender.SimpleQueue(queue).put({"job": 1})
        message = receiver.SimpleQueue(queue).get(timeout=5)
        message.ack()
    assert message.payload == {"job": 1}


def test_a_timed_wait_returns_within_the_cap(url: str) -> None:
    """Celery's synloop drains with ``timeout=2.0`` and checks its shutdown flag only in between."""
    with Connection(url) as conn:
        conn.SimpleQueue("empty")._consume()
        started = time.monotonic()
        with pytest.raises(socket.timeout):
            conn.drain_events(timeout=2.0)
        waited = time.monotonic() - started
    assert waited < 1.0, f"drain_events(timeout=2.0) waited {waited:.2f}s; the cap is 0.25s"


def test_an_untimed_wait_still_blocks_until_a_message(url: str) -> None:
    with Connection(url) as conn, Connection(url) as sender:
        received: list[object] = []
        simple = conn.SimpleQueue("later")
        simple.consumer.register_callback(lambda body, message: (received.append(body), message.ack()))
        simple._consume()
        timer = threading.Timer(0.6, lambda: sender.SimpleQueue("later").put("late"))
        timer.start()
        try:
            conn.drain_events(timeout=None)
        finally:
            timer.join()
    assert received == ["late"]


def test_a_queue_another_process_declares_first_is_found(url: str, tmp_path: Path) -> None:
    """Another process inserts the queue's row between our look and our insert (a miner and the auditor
    starting together): the declare finds that row instead of dying on the unique name."""
    with Connection(url) as conn:
        channel = conn.default_channel
        engine, _ = channel._open()
        raced: list[str] = []

        def other_process_wins(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
            if statement.startswith("INSERT INTO kombu_queue") and not raced:
                with sqlite3.connect(tmp_path / "broker.sqlite", timeout=30) as other:
                    other.execute("INSERT INTO kombu_queue (name) VALUES ('vram8.sd15')")
                raced.append(statement)

        sa.event.listen(engine, "before_cursor_execute", other_process_wins)
        try:
            channel.queue_declare("vram8.sd15")
            conn.SimpleQueue("vram8.sd15").put("job")
            assert conn.SimpleQueue("vram8.sd15").get(timeout=5).payload == "job"
        finally:
            sa.event.remove(engine, "before_cursor_execute", other_process_wins)
    assert raced
