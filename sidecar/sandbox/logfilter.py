"""Quiet logging of malformed requests by the sandbox's aiohttp servers.

Only the sandbox serves with aiohttp (the sidecar's own listeners do not), so the filter
lives here and is installed when a sandbox server starts.
"""

from __future__ import annotations

import logging

__all__ = ["MalformedRequests", "install"]

_SERVER_LOGGER = "aiohttp.server"


def _is_http_processing_error(exc: BaseException | None) -> bool:
    # By name: checking needs no aiohttp import.
    return exc is not None and any(
        k.__name__ == "HttpProcessingError" and k.__module__.startswith("aiohttp")
        for k in type(exc).__mro__
    )


class MalformedRequests(logging.Filter):
    """aiohttp logs every malformed request at ERROR with a traceback and the offending bytes
    (which may carry an app's credentials). The client already got its 400: keep one short
    warning naming the kind of error, without the bytes, so bad input cannot flood the logs."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if record.name == _SERVER_LOGGER and _is_http_processing_error(exc):
            record.msg, record.args = "malformed_request_refused", ()
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.exc_info, record.exc_text = None, None
            record.__dict__["error"] = type(exc).__name__
            record.__dict__["status"] = getattr(exc, "code", None)
        return True


def install() -> None:
    """Add the filter to aiohttp's server logger once; on the logger, so every handler
    sees it, whenever logging is configured."""
    server_log = logging.getLogger(_SERVER_LOGGER)
    if not any(isinstance(f, MalformedRequests) for f in server_log.filters):
        server_log.addFilter(MalformedRequests())
