"""The base of every sandbox emulator with fault controls: its aiohttp app, the
``/_sandbox/`` routes, and the Python methods that mirror them.

Each emulator keeps what is genuinely its own: routes, error bodies, statistics and
settings. What they all did the same way (fail, hang, settings, call counting, the
``app``/``controls`` accessors) lives here once.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from aiohttp import web

from sidecar.sandbox import controls
from sidecar.sandbox.controls import FaultControls, Validator, failure_text

__all__ = ["LOOPBACK_HOSTS", "MAX_EVENTS", "Emulator"]

LOOPBACK_HOSTS = ("127.0.0.1", "localhost")  # names in every emulator's server certificate
MAX_EVENTS = controls.MAX_EVENTS  # keep issued-token logs bounded during long load runs
_AIOHTTP_MAX_BODY = 1024**2  # aiohttp's own default client_max_size


class Emulator(abc.ABC):
    """An emulator's app with fault injection, statistics and runtime settings.

    Subclasses name the settings ``POST /_sandbox/settings`` may change in ``SETTINGS``
    (plain attributes, read on every call), add their own routes and call
    ``add_sandbox_routes`` where the control routes belong (before any catch-all route).
    ``answer_failure`` and ``answer_closed`` word injected failures and shutdown answers
    as the emulated service words its errors. Which calls are subject to the controls
    (the "controlled calls") is each emulator's choice, named in its class doc.
    """

    SETTINGS: ClassVar[Mapping[str, Validator]] = {}
    HANGS: ClassVar[bool] = True  # False: no /_sandbox/hang, the calls never wait
    latency: float = 0.0  # seconds each controlled call waits; a setting where listed

    def __init__(self, *, client_max_size: int = _AIOHTTP_MAX_BODY) -> None:
        self._controls = FaultControls()
        self._app = web.Application(client_max_size=client_max_size)

    @property
    def app(self) -> web.Application:
        return self._app

    @property
    def controls(self) -> FaultControls:
        """Fault injection for the controlled calls from Python (``fail_with``,
        ``fail_randomly``, ``hang``, ``injected``); ``/_sandbox/fail`` over HTTP."""
        return self._controls

    # -- routes ----------------------------------------------------------------------------

    def add_sandbox_routes(self, *, none_status: bool = False) -> None:
        """The ``/_sandbox/`` fail, hang, stats and settings routes (see ``controls``)."""
        controls.add_sandbox_routes(
            self._app,
            self,
            self._controls,
            self.SETTINGS,
            hang=self.HANGS,
            none_status=none_status,
        )

    def add_action_route(self, path: str, field: str, action: Callable[[], int]) -> None:
        """``POST path`` runs ``action`` and answers ``{field: what it returned}``."""

        async def handler(request: web.Request) -> web.Response:
            return web.json_response({field: action()})

        self._app.router.add_post(path, handler)

    # -- controls --------------------------------------------------------------------------

    def fail_with(self, status: int | None, count: int | None = None) -> None:
        """Answer the next ``count`` controlled calls (all if None) with ``status``.

        ``status=None`` (or ``count=0``) clears the failure.
        """
        self._controls.fail_with(status, count)

    def hang(self, enabled: bool) -> None:
        """While enabled, controlled calls wait and never answer (until disabled or
        shutdown)."""
        if not self.HANGS:
            raise TypeError(f"{type(self).__name__} has no hang control")
        self._controls.hang(enabled)

    def settings(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.SETTINGS}

    @abc.abstractmethod
    def stats(self) -> dict[str, Any]:
        """What the emulator saw, for tests and ``/_sandbox/stats``."""

    def call_stats(self) -> dict[str, Any]:
        """Concurrency and the per-call events of the calls run under ``controls.track``."""
        return {
            "max_concurrent": self._controls.max_concurrent,
            "in_flight": self._controls.in_flight,
            "events": [dict(e) for e in self._controls.events],
        }

    def reset_stats(self) -> None:
        self._controls.reset_stats()

    # -- answers ---------------------------------------------------------------------------

    def answer_failure(self, status: int) -> web.Response:
        """An injected failure; emulators override it with their own error body."""
        return web.Response(status=status, text=failure_text(status))

    def answer_closed(self) -> web.Response:
        """The answer to a call still waiting when the server shuts down."""
        return web.Response(status=503, text="Server is shutting down")

    async def intercept(
        self, failure: Callable[[int], web.Response] | None = None
    ) -> web.Response | None:
        """Hang and delay a controlled call by ``latency``; then what replaces its real
        answer (shutting down, or an injected failure worded by ``failure``), if anything."""
        return await self._controls.intercept(
            self.latency, closed=self.answer_closed, failure=failure or self.answer_failure
        )
