"""The proxy.py plugin of the benchmark: what a Python forward proxy does for the same job.

It runs inside proxy.py's own venv (``proxy`` is not installed in the project's), loaded
with ``--plugins proxypy_bench.BenchAuthPlugin`` and ``PYTHONPATH`` set to this folder.
Requests for ``api.bench.test`` get ``Authorization`` from ``BENCH_AUTHORIZATION`` and go
to ``BENCH_UPSTREAM`` (``host:port``). proxy.py cannot originate TLS for a plain-HTTP
request, so that upstream is the plain one: this row is spared the TLS work.
"""

from __future__ import annotations

import os

from proxy.http.parser import HttpParser  # type: ignore[import-not-found]
from proxy.http.proxy import HttpProxyBasePlugin  # type: ignore[import-not-found]

_HOST = b"api.bench.test"
_AUTHORIZATION = os.environ["BENCH_AUTHORIZATION"].encode()
_UPSTREAM_HOST, _, _UPSTREAM_PORT = os.environ["BENCH_UPSTREAM"].rpartition(":")


class BenchAuthPlugin(HttpProxyBasePlugin):  # type: ignore[misc]
    def before_upstream_connection(self, request: HttpParser) -> HttpParser | None:
        if request.host == _HOST:
            request.host = _UPSTREAM_HOST.encode()
            request.port = int(_UPSTREAM_PORT)
        return request

    def handle_client_request(self, request: HttpParser) -> HttpParser | None:
        # Called for every request on a keep-alive connection, not only the first.
        request.del_header(b"authorization")
        request.add_header(b"Authorization", _AUTHORIZATION)
        return request
