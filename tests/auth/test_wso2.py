"""WSO2 gateway faults: only 900900-900904 in a 401 mean "token no longer valid"."""

from __future__ import annotations

import pytest

from sidecar.auth.wso2 import Wso2GatewayFaults, fault_code

JSON_FAULT = (
    b'{"fault":{"code":900901,"message":"Invalid Credentials","description":"Access failure '
    b'for API: /etsfo/1.0.0, version: 1.0.0 status: (900901) - Invalid Credentials."}}'
)
XML_FAULT = (
    b'<ams:fault xmlns:ams="http://wso2.org/apimanager/security"><ams:code>900903</ams:code>'
    b"<ams:message>Access Token Expired</ams:message></ams:fault>"
)


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (JSON_FAULT, 900901),
        (XML_FAULT, 900903),
        (b'{"fault":{"code":"900908","message":"Resource forbidden"}}', 900908),
        (b'{"error":"invalid_token"}', None),
        (b"<html>Unauthorized</html>", None),
        (b"", None),
        (b'{"fault": "900901"}', None),
        (b"{broken json", None),
    ],
)
def test_fault_code(body: bytes, code: int | None) -> None:
    assert fault_code(body) == code


@pytest.mark.parametrize(
    ("status", "body", "rejected"),
    [
        (401, JSON_FAULT, True),
        (401, XML_FAULT, True),
        (401, b'{"fault":{"code":900902,"message":"Missing Credentials"}}', True),
        (401, b'{"fault":{"code":900904,"message":"Access Token Inactive"}}', True),
        (401, b'{"fault":{"code":900900,"message":"Unclassified Authentication Failure"}}', True),
        (401, b'{"fault":{"code":900908,"message":"Resource forbidden"}}', False),
        (401, b'{"fault":{"code":900910,"message":"scope"}}', False),
        (403, b'{"fault":{"code":900908,"message":"Resource forbidden"}}', False),
        (403, JSON_FAULT, False),
        (401, b"not a fault", False),
    ],
)
def test_only_token_faults_in_401_mean_token_dead(status: int, body: bytes, rejected: bool) -> None:
    assert Wso2GatewayFaults().token_rejected(status, body)[0] is rejected
