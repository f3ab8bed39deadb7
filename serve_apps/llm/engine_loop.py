"""Run an LLMEngine inside a Serve replica: one thread steps it, each request reads an asyncio queue.

The engine is synchronous and not thread-safe, so every call into it happens on the stepping
thread; the replica's event loop only enqueues commands and awaits per-request queues. A request
with a deadline is aborted (its blocks freed) when the deadline passes before it finishes.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from serve_apps.llm.errors import OpenAIError

logger = logging.getLogger(__name__)


class RequestDeadlineExceeded(TimeoutError):
    """A request ran past its deadline; the engine has been told to abort it."""


@dataclass(kw_only=True, slots=True)
class _Add:
    request_id: str
    prompt: Any
    params: Any
    kv_package: Any
    queue: asyncio.Queue
    loop: asyncio.AbstractEventLoop
    on_added: Callable[[], None] | None


class AsyncEngine:
    """Thread-stepped engine with per-request async output streams and a bounded waiting queue."""

    def __init__(self, engine: Any, *, max_waiting_requests: int):
        self.engine = engine
        self.max_waiting_requests = max_waiting_requests
        self._commands: list[_Add | str] = []
        self._queues: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self._lock = threading.Lock()
        self._wakeup = threading.Event()
        self._stopped = False
        self._last_stats: dict[str, Any] = dict(engine.stats())
        self._thread = threading.Thread(target=self._run, name="engine-loop", daemon=True)
        self._thread.start()

    @property
    def num_requests(self) -> int:
        return len(self._queues)

    def stats(self) -> dict[str, Any]:
        """Engine counters as of the last step (read without touching the engine from this thread)."""
        return dict(self._last_stats)

    async def generate(
        self,
        request_id: str,
        prompt: Any,
        params: Any,
        *,
        kv_package: Any = None,
        on_added: Callable[[], None] | None = None,
        deadline_s: float | None = None,
        admitted: bool = False,
    ) -> AsyncIterator[Any]:
        """Yield RequestOutputs until finished; leaving early (cancel, disconnect) or passing `deadline_s` (on
        the running loop's clock, `loop.time()`) aborts the request. `admitted`: the caller already passed
        `check_capacity` for it (decode checks before its remote prefill, so a pulled package is never refused)."""
        if not admitted:
            self.check_capacity()
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        add = _Add(
            request_id=request_id, prompt=prompt, params=params, kv_package=kv_package,
            queue=queue, loop=loop, on_added=on_added,
        )
        del kv_package  # the add command holds the only reference; it drops it once the KV is cached
        with self._lock:
            self._queues[request_id] = (loop, queue)
            self._commands.append(add)
        self._wakeup.set()
        finished = False
        try:
            while True:
                if deadline_s is None:
                    item = await queue.get()
                else:
                    try:
                        async with asyncio.timeout_at(deadline_s):
                            item = await queue.get()
                    except TimeoutError:
                        raise RequestDeadlineExceeded(request_id) from None
                if isinstance(item, BaseException):
                    finished = True
                    raise item
                finished = item.finished
                yield item
                if finished:
                    return
        finally:
            if not finished:
                self.abort(request_id)
            with self._lock:
                self._queues.pop(request_id, None)

    def check_capacity(self, num_reserved: int = 0) -> None:
        """Raise a 429 when the waiting bound is reached (`num_reserved`: requests admitted but not yet added)."""
        waiting = (self._last_stats.get("num_waiting", 0) + sum(isinstance(c, _Add) for c in self._commands)
                   + num_reserved)
        if waiting >= self.max_waiting_requests:
            raise OpenAIError(
                f"server overloaded: {waiting} requests waiting", status_code=429, code="overloaded",
                retry_after_s=1.0,
            )

    def abort(self, request_id: str) -> None:
        with self._lock:
            self._commands.append(request_id)
        self._wakeup.set()

    def shutdown(self) -> None:
        self._stopped = True
        self._wakeup.set()
        self._thread.join(timeout=10)

    # -- stepping thread -------------------------------------------------------------------------

    def _deliver(self, request_id: str, item: Any) -> None:
        target = self._queues.get(request_id)
        if target is not None:
            loop, queue = target
            loop.call_soon_threadsafe(queue.put_nowait, item)

    def _apply_commands(self) -> None:
        with self._lock:
            commands, self._commands = self._commands, []
        for command in commands:
            if isinstance(command, str):
                self.engine.abort_request(command)
                continue
            try:
                self.engine.add_request(command.request_id, command.prompt, command.params, command.kv_package)
            except ValueError as exc:
                self._deliver(command.request_id, OpenAIError(str(exc), status_code=400))
            finally:
                command.kv_package = None
                if command.on_added is not None:
                    command.loop.call_soon_threadsafe(command.on_added)

    def _run(self) -> None:
        while not self._stopped:
            self._wakeup.clear()  # before reading commands, so a later set() is never missed
            self._apply_commands()
            if not self.engine.has_unfinished_requests():
                self._last_stats = dict(self.engine.stats())
                self._wakeup.wait(timeout=0.5)
                continue
            try:
                outputs = self.engine.step()
            except Exception as exc:  # a broken step must fail its requests, not hang them
                logger.exception("engine step failed; failing all running requests")
                for request_id in list(self._queues):
                    self.engine.abort_request(request_id)
                    self._deliver(request_id, OpenAIError(f"engine error: {exc}", status_code=503))
                continue
            for output in outputs:
                self._deliver(output.request_id, output)
            self._last_stats = dict(self.engine.stats())
