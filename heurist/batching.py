"""Gather calls made from many threads into batches run by one thread: the miner's batched generation and
the ledger's batched verification (issue 17) share this.

Each Celery worker thread keeps its own message, ack and retry: it calls ``submit(item)`` and blocks until its
result (or its own exception) comes back. Only the work in between is batched. That keeps every per-message
guarantee (acks late, transient retries, dead letters, exactly once by unique keys) while the expensive part
runs once per batch: one batched ``generate`` for 8 prompts instead of 8, one transaction for 32 verdicts.

A batch starts with the oldest waiting item and takes the items waiting with the same ``key`` (same model, same
image size and steps), up to ``max_size``. If fewer are waiting it waits for more until ``window_s`` after
the oldest one arrived: items that queued up while the runner was busy go at once. ``run_batch`` returns one
result or exception per item, in order; if it raises, every item of the batch gets that exception.
``max_size=1`` runs each item alone. A caller that stops waiting (a job past its time limit) ``withdraw``s its
item: taken off the waiting list, it is never run.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class _Waiting(Generic[T, R]):
    item: T
    key: Hashable
    arrived: float = field(default_factory=time.monotonic)
    future: Future[R] = field(default_factory=Future)


class MicroBatcher(Generic[T, R]):
    """``submit`` from any thread; batches of up to ``max_size`` items with one ``key`` run on one thread."""

    def __init__(self, run_batch: Callable[[list[T]], Sequence[R | BaseException]], *, max_size: int,
                 window_s: float, key: Callable[[T], Hashable] = lambda item: None, name: str = "batcher") -> None:
        if max_size < 1:
            raise ValueError(f"max_size must be 1 or more, got {max_size}")
        self.run_batch, self.max_size, self.window_s, self.key, self.name = run_batch, max_size, window_s, key, name
        self._waiting: list[_Waiting[T, R]] = []
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False
        self.batches = 0  # batches run so far, and the items in them: the mean batch size is items / batches
        self.items = 0

    def submit(self, item: T) -> R:
        """Run ``item`` in the next batch that can take it; its result, or its exception raised here."""
        return self.enqueue(item).result()

    def enqueue(self, item: T) -> Future[R]:
        """``submit`` without the wait: the future of ``item``'s result (a caller that may learn its result
        before the batch ends, as a text job whose row stopped early does, waits on both)."""
        waiting: _Waiting[T, R] = _Waiting(item, self.key(item))
        with self._cond:
            if self._closed:
                raise RuntimeError(f"{self.name} is closed")
            self._waiting.append(waiting)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
                self._thread.start()
            self._cond.notify_all()
        return waiting.future

    def withdraw(self, future: Future[R]) -> bool:
        """Take the item of ``future`` (from ``enqueue``) off the waiting list and cancel its future, if no batch
        has taken it yet: it will not run. False if a batch has (its result comes as usual) or it is unknown."""
        with self._cond:
            for n, waiting in enumerate(self._waiting):
                if waiting.future is future:
                    del self._waiting[n]
                    waiting.future.cancel()
                    self._cond.notify_all()
                    return True
        return False

    def close(self, wait_s: float = 0.0) -> None:
        """Stop after the batch running now, waiting up to ``wait_s`` for it to end (a process that exits with
        its thread still in a native call may abort); items still waiting fail."""
        with self._cond:
            self._closed = True
            left, self._waiting = self._waiting, []
            self._cond.notify_all()
            thread = self._thread
        for waiting in left:
            waiting.future.set_exception(RuntimeError(f"{self.name} closed before this item ran"))
        if thread is not None and wait_s > 0 and thread is not threading.current_thread():
            thread.join(wait_s)

    def _same_key(self, key: Hashable) -> list[_Waiting[T, R]]:
        return [w for w in self._waiting if w.key == key][:self.max_size]

    def _next_batch(self) -> list[_Waiting[T, R]] | None:
        """The next batch to run, never empty; None once closed."""
        with self._cond:
            while True:
                while not self._waiting and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return None
                key = self._waiting[0].key
                until = self._waiting[0].arrived + self.window_s
                while len(self._same_key(key)) < self.max_size and not self._closed:
                    left = until - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
                batch = self._same_key(key)
                if self._closed or not batch:  # closed during the window, or its items were withdrawn
                    continue
                taken = {id(w) for w in batch}
                self._waiting = [w for w in self._waiting if id(w) not in taken]
                return batch

    def _loop(self) -> None:
        while (batch := self._next_batch()) is not None:
            self._run(batch)

    def _run(self, batch: list[_Waiting[T, R]]) -> None:
        self.batches += 1
        self.items += len(batch)
        try:
            results = list(self.run_batch([w.item for w in batch]))
            if len(results) != len(batch):
                raise RuntimeError(f"{self.name}: {len(results)} results for a batch of {len(batch)}")
        except BaseException as err:  # each caller gets it, in its own thread
            results = [err] * len(batch)
        for waiting, result in zip(batch, results, strict=True):
            if isinstance(result, BaseException):
                waiting.future.set_exception(result)
            else:
                waiting.future.set_result(result)
