"""The proxy's own refusals: JSON naming the upstream (when one was chosen) and the reason."""

from __future__ import annotations

from sidecar.http1.answer import LocalAnswer, error_answer
from sidecar.http1.retry_after import retry_after_header


def error_response(
    status: int,
    error: str,
    message: str,
    *,
    upstream: str | None = None,
    retry_after: float | None = None,
) -> LocalAnswer:
    extra: dict[str, object] = {} if upstream is None else {"upstream": upstream}
    answer = error_answer(status, error, message, **extra)
    if retry_after is not None:
        answer.headers["Retry-After"] = retry_after_header(retry_after)  # huge or NaN: safe
    return answer
