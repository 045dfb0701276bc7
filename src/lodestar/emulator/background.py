"""Emulated engines on a background thread (their own event loop), for tests, notebooks and synchronous callers.

Consumes: `EmulatorConfig`s. Produces: running servers with their URLs; `stop()` ends them and joins the thread.

    with EmulatorThread([EmulatorConfig(gpu="h100", port=0)]) as emu:
        url = emu.urls[0]
        ...                                  # any client, any thread
        emu.call(lambda s: s.apply(FaultUpdate(slowdown=2.0)))   # run a coroutine on server 0's loop
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from lodestar.emulator.server import EmulatorConfig, EmulatorServer


class EmulatorThread:
    def __init__(self, configs: list[EmulatorConfig], start_timeout_s: float = 10.0) -> None:
        self.configs = configs
        self.servers: list[EmulatorServer] = []
        self.urls: list[str] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="lodestar-emulators", daemon=True)
        self._timeout = start_timeout_s

    def start(self) -> EmulatorThread:
        self._thread.start()

        async def boot() -> None:
            for cfg in self.configs:
                srv = EmulatorServer(cfg)
                self.urls.append(await srv.start())
                self.servers.append(srv)

        try:
            asyncio.run_coroutine_threadsafe(boot(), self._loop).result(self._timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def call(self, fn: Callable[[EmulatorServer], Awaitable[Any]], index: int = 0, timeout_s: float = 10.0) -> Any:
        """Run `fn(server)` (a coroutine) on the emulators' loop and return its result."""

        async def run() -> Any:
            return await fn(self.servers[index])

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout_s)

    def stop(self) -> None:
        if not self._thread.is_alive():
            return

        async def down() -> None:
            for srv in self.servers:
                await srv.stop()

        try:
            asyncio.run_coroutine_threadsafe(down(), self._loop).result(self._timeout)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(self._timeout)
            if not self._thread.is_alive():
                self._loop.close()

    def __enter__(self) -> EmulatorThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
