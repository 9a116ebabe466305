"""Reading the Passport token out of Set-Cookie, byte for byte."""

from __future__ import annotations

import pytest

from sidecar.auth.moex_passport import passport_cookie


@pytest.mark.parametrize(
    ("headers", "token"),
    [
        (["MicexPassportCert=AbC+/x==; Path=/; HttpOnly"], "AbC+/x=="),
        (['MicexPassportCert="AbC+/x=="; Path=/'], "AbC+/x=="),
        (["other=1", "MicexPassportCert=tok=; Secure"], "tok="),
        (["MicexPassportCert=; Max-Age=0", "MicexPassportCert=AbC+/x==; Path=/"], "AbC+/x=="),
        (["MicexPassportCert=OLD+/==", "MicexPassportCert=NEW+/=="], "NEW+/=="),
        (["MicexPassportCert=; Max-Age=0"], None),
        (["micexpassportcert=lower"], None),
        ([], None),
    ],
)
def test_passport_cookie(headers: list[str], token: str | None) -> None:
    assert passport_cookie(headers) == token
