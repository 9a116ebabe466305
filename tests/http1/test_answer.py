"""The sidecar's own whole answers (``sidecar.http1.answer``): JSON, never cached, sized."""

from __future__ import annotations

import json

from multidict import CIMultiDict

from sidecar.http1.answer import answer_headers, error_answer, json_answer
from sidecar.http1.request import ServerRequest
from tests.helpers.transport import StubConnection


def test_an_error_answer_names_the_error_and_keeps_non_ascii_text() -> None:
    answer = error_answer(503, "no_token", "нет токена", upstream="moex-ntb")
    assert answer.status == 503
    assert answer.headers == CIMultiDict(
        {"Content-Type": "application/json", "Cache-Control": "no-store"})
    assert "нет токена".encode() in answer.body  # UTF-8, not \\u escapes
    assert json.loads(answer.body) == {
        "error": "no_token", "message": "нет токена", "upstream": "moex-ntb"}


async def test_a_local_answer_goes_out_whole_with_its_length() -> None:
    conn = StubConnection()
    request = ServerRequest(conn, "GET", "/", "1.1", CIMultiDict(), True, False)
    request.complete = True
    await json_answer(200, {"status": "ok"}).send(request)
    assert conn.written == (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                            b"Cache-Control: no-store\r\nContent-Length: 16\r\n\r\n"
                            b'{"status": "ok"}')
    assert request.finished


def test_answer_headers_take_another_content_type() -> None:
    assert answer_headers("text/plain")["Content-Type"] == "text/plain"
    assert answer_headers() is not answer_headers()  # each answer may add its own headers
