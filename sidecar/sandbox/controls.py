"""Fault injection, hangs and call counting shared by the sandbox emulators.

Every emulator can be told to fail its next calls (``fail_with``), to fail a random share
of them (``fail_randomly``, with a seedable generator so a run can be repeated), to hang
them (``hang``), and reports how many calls were in flight at once; users drive this over
HTTP under ``/_sandbox/`` (``fail``, ``hang``, ``stats``, ``stats/reset``, ``settings``).
The machinery is the same everywhere, so it lives here; each emulator keeps only its own
error bodies, statistics and settings, and hands its controls out as ``emulator.controls``.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Protocol

from aiohttp import web

__all__ = [
    "FaultControls",
    "SandboxEmulator",
    "TrackedCall",
    "Validator",
    "add_sandbox_routes",
    "boolean",
    "failure_text",
    "finite_number",
    "integer",
    "number",
]

MAX_EVENTS = 10_000  # keep stats bounded during long load runs
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")

# A setting's check: given its name and the JSON value, the value to store, or ValueError.
Validator = Callable[[str, Any], Any]


def failure_text(status: int) -> str:
    """The message every emulator puts in an injected failure's body."""
    return f"Injected sandbox failure (HTTP {status})"


class TrackedCall:
    """The status of a call under ``FaultControls.track``."""

    def __init__(self) -> None:
        self.status: int | None = None

    def done(self, response: web.Response) -> web.Response:
        self.status = response.status
        return response


class FaultControls:
    """One emulator's injected failures, hang switch and in-flight counting."""

    def __init__(self, *, max_events: int = MAX_EVENTS) -> None:
        self.fail_status: int | None = None
        self.fail_remaining: int | None = None  # None: every call fails
        self.fail_ratio = 0.0  # share of calls failed at random (after any counted failures)
        self.ratio_status = 503
        self.ratio_seed: int | None = None
        self._rng = random.Random()
        self.calls = 0  # calls that could have been failed (all but those during shutdown)
        self.injected = 0  # failures injected so far, counted and random alike
        self.hanging = False
        self.closing = False  # set on shutdown: calls answer 503 instead of working
        self._release: asyncio.Event | None = None
        self.in_flight = 0
        self.max_concurrent = 0
        self.events: deque[dict[str, Any]] = deque(maxlen=max_events)

    # -- failures --------------------------------------------------------------------------

    def fail_with(self, status: int | None, count: int | None = None) -> None:
        """Fail the next ``count`` calls (all if None) with ``status``; None clears it."""
        if status is not None and not 400 <= status <= 599:
            raise ValueError(f"status must be a 4xx or 5xx code, got {status}")
        if count is not None and count < 1:
            status = None
        self.fail_status = status
        self.fail_remaining = count if status is not None else None

    def fail_randomly(self, ratio: float, status: int = 503, *, seed: int | None = None) -> None:
        """Fail each call with probability ``ratio`` (0 turns it off), answering ``status``.

        ``seed`` restarts the generator, so the same calls fail again in a repeated run.
        Counted failures set by ``fail_with`` come first.
        """
        if not 0.0 <= ratio <= 1.0:  # NaN fails this too
            raise ValueError(f"ratio must be between 0 and 1, got {ratio}")
        if not 400 <= status <= 599:
            raise ValueError(f"status must be a 4xx or 5xx code, got {status}")
        self.fail_ratio = ratio
        self.ratio_status = status
        if seed is not None:
            self._rng.seed(seed)
        self.ratio_seed = seed

    def take_failure(self, respond: Callable[[int], web.Response]) -> web.Response | None:
        """Use up one injected failure, answered by ``respond(status)``; None if none is due.

        The emulator supplies ``respond`` because each one words its errors differently.
        """
        self.calls += 1
        status = self.fail_status
        if status is not None:
            if self.fail_remaining is not None:
                self.fail_remaining -= 1
                if self.fail_remaining <= 0:
                    self.fail_with(None)
        elif self.fail_ratio > 0 and self._rng.random() < self.fail_ratio:
            status = self.ratio_status
        else:
            return None
        self.injected += 1
        return respond(status)

    def failure_state(self) -> dict[str, Any]:
        """What ``GET /_sandbox/fail`` shows: the failures set and how many were injected."""
        return {
            "status": self.fail_status,
            "count": self.fail_remaining,
            "ratio": self.fail_ratio,
            "ratio_status": self.ratio_status,
            "seed": self.ratio_seed,
            "calls": self.calls,
            "injected": self.injected,
        }

    # -- hangs -----------------------------------------------------------------------------

    def hang(self, enabled: bool) -> None:
        """While enabled, ``pause`` waits until disabled or shutdown."""
        self.hanging = enabled
        if enabled:
            if self._release is None:
                self._release = asyncio.Event()
        elif self._release is not None:
            self._release.set()
            self._release = None

    async def pause(self, latency: float = 0.0) -> None:
        """Wait while hung, then for ``latency`` seconds; check ``closing`` afterwards."""
        release = self._release
        if release is not None:
            await release.wait()
        if latency > 0:
            await asyncio.sleep(latency)

    async def intercept(
        self,
        latency: float,
        *,
        closed: Callable[[], web.Response],
        failure: Callable[[int], web.Response],
    ) -> web.Response | None:
        """Hang and delay a call, then what replaces its real answer, if anything.

        That is ``closed()`` once the server is shutting down, else an injected failure.
        """
        await self.pause(latency)
        if self.closing:
            return closed()
        return self.take_failure(failure)

    async def on_startup(self, app: web.Application) -> None:
        self.closing = False
        # A hang set before (re)start must hold again: the old Event was released on shutdown.
        if self.hanging and self._release is None:
            self._release = asyncio.Event()

    async def on_shutdown(self, app: web.Application) -> None:
        # Let hung handlers finish (with a 503) so the server can stop promptly.
        self.closing = True
        if self._release is not None:
            self._release.set()
            self._release = None

    # -- counting --------------------------------------------------------------------------

    @contextmanager
    def track(self, event: dict[str, Any]) -> Iterator[TrackedCall]:
        """Count one call as in flight; on exit log ``event`` with its ``end`` and ``status``.

        The block passes its answer through ``call.done``. The status stays None if the
        call never completes (cancelled).
        """
        call = TrackedCall()
        self.in_flight += 1
        self.max_concurrent = max(self.max_concurrent, self.in_flight)
        try:
            yield call
        except web.HTTPException as exc:  # e.g. 413 from an oversized body
            call.status = exc.status
            raise
        finally:
            self.in_flight -= 1
            event.update(end=time.monotonic(), status=call.status)
            self.events.append(event)

    def reset_stats(self) -> None:
        # Calls still in progress keep counting towards the new maximum.
        self.max_concurrent = self.in_flight
        self.events.clear()


# -- settings validators -------------------------------------------------------------------


def boolean(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be a boolean")
    return value


def _require_number(name: str, value: Any) -> float:
    # bool is an int subclass, but true/false is never a sensible duration or size.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number")
    return value


def number(name: str, value: Any) -> float:
    """A non-negative number (NaN and infinity pass, as they always have)."""
    if _require_number(name, value) < 0:
        raise ValueError(f"{name} must not be negative")
    return value


def integer(name: str, value: Any) -> int:
    number(name, value)
    if not isinstance(value, int):
        raise ValueError(f"{name} must be an integer")
    return value


def finite_number(name: str, value: Any) -> float:
    value = _require_number(name, value)
    if value < 0 or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite, non-negative number")
    return value


# -- /_sandbox routes ----------------------------------------------------------------------


class SandboxEmulator(Protocol):
    """What the standard routes need from an emulator; settings are its attributes."""

    def stats(self) -> dict[str, Any]: ...

    def reset_stats(self) -> None: ...

    def settings(self) -> dict[str, Any]: ...


def _error(message: str) -> web.Response:
    return web.json_response({"error": message}, status=400)


def add_sandbox_routes(
    app: web.Application,
    emulator: SandboxEmulator,
    controls: FaultControls,
    schema: Mapping[str, Validator],
    *,
    hang: bool = True,
    none_status: bool = False,
) -> None:
    """Add ``/_sandbox/`` fail, hang, stats, stats/reset and settings routes to ``app``.

    ``schema`` names each setting ``POST /_sandbox/settings`` may change and checks its
    value. ``hang=False`` leaves out the hang route and its lifecycle hooks, for an
    emulator that cannot hang; ``none_status`` also accepts ``status=none`` to clear a
    failure (only some emulators always did, and the others keep answering it with 400).
    """

    async def fail_handler(request: web.Request) -> web.Response:
        """``?status=500&count=3`` fails the next calls; ``?ratio=0.2[&status=503][&seed=7]``
        fails a random share of them; no status and no ratio clears both; GET shows them."""
        if request.method == "GET":
            return web.json_response(controls.failure_state())
        try:
            raw_status = request.query.get("status")
            raw_count = request.query.get("count")
            raw_ratio = request.query.get("ratio")
            status: int | None = None
            if raw_status and not (none_status and raw_status.lower() == "none"):
                status = int(raw_status)
            if raw_ratio is not None:
                raw_seed = request.query.get("seed")
                controls.fail_randomly(
                    float(raw_ratio),
                    503 if status is None else status,
                    seed=int(raw_seed) if raw_seed else None,
                )
            else:
                count = int(raw_count) if raw_count else None
                controls.fail_with(status, count)
                if status is None:
                    controls.fail_randomly(0.0)
        except ValueError as exc:
            return _error(str(exc))
        # As it always did: the counted failure; the random one too while it is set.
        state = controls.failure_state()
        answer = {"status": state["status"], "count": state["count"]}
        if controls.fail_ratio > 0:
            answer.update(ratio=state["ratio"], ratio_status=state["ratio_status"],
                          seed=state["seed"])
        return web.json_response(answer)

    async def hang_handler(request: web.Request) -> web.Response:
        raw = request.query.get("enabled", "1").lower()
        if raw not in _TRUE + _FALSE:
            return _error("enabled must be a boolean")
        controls.hang(raw in _TRUE)
        return web.json_response({"hang": controls.hanging})

    async def stats_handler(request: web.Request) -> web.Response:
        return web.json_response(emulator.stats())

    async def reset_stats_handler(request: web.Request) -> web.Response:
        emulator.reset_stats()
        return web.json_response(emulator.stats())

    async def settings_handler(request: web.Request) -> web.Response:
        """GET shows the settings; POST with a JSON object changes some of them."""
        if request.method == "POST":
            try:
                changes = await request.json()
                if not isinstance(changes, dict):
                    raise ValueError("expected a JSON object")
                updates: dict[str, Any] = {}
                for name, value in changes.items():
                    if name not in schema:
                        raise ValueError(f"unknown setting {name!r}")
                    updates[name] = schema[name](name, value)
            except ValueError as exc:  # json.JSONDecodeError is a ValueError too
                return _error(str(exc))
            # All or nothing: nothing is set unless every change is valid.
            for name, value in updates.items():
                setattr(emulator, name, value)
        return web.json_response(emulator.settings())

    router = app.router
    router.add_post("/_sandbox/fail", fail_handler)
    router.add_get("/_sandbox/fail", fail_handler)
    if hang:
        router.add_post("/_sandbox/hang", hang_handler)
        app.on_startup.append(controls.on_startup)
        app.on_shutdown.append(controls.on_shutdown)
    router.add_get("/_sandbox/stats", stats_handler)
    router.add_post("/_sandbox/stats/reset", reset_stats_handler)
    router.add_get("/_sandbox/settings", settings_handler)
    router.add_post("/_sandbox/settings", settings_handler)
