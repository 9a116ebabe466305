"""The whole MOEX client registration stack of the sandbox: MOEX Passport, the
registration API over TLS, and the wiring that lets the Keycloak emulator log Passport
users in (docs/protocols.md, "MOEX Passport")."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sidecar.sandbox.emulator import LOOPBACK_HOSTS
from sidecar.sandbox.keycloak import KeycloakEmulator
from sidecar.sandbox.passport import MoexPassport
from sidecar.sandbox.pki import IssuedCert, Pki
from sidecar.sandbox.registration import REGISTRATION_CLIENT_ID, RegistrationApi
from sidecar.sandbox.servers import TlsServer

__all__ = ["MoexStack", "start_moex_registration"]

_DEFAULT_CLIENT_SECRET = "registration-secret"
_PASSPORT_SETTINGS = frozenset({"users", "token_ttl", "redirect"})


@dataclass
class MoexStack:
    """What ``start_moex_registration`` started, with the values a sidecar config needs."""

    passport: MoexPassport
    passport_server: TlsServer
    registration: RegistrationApi
    registration_server: TlsServer
    passport_url: str  # the GET /authenticate URL
    api_url: str  # the registration API's base URL (scheme://host:port)
    signer: IssuedCert  # the default Passport user's RSA signing certificate
    user: str  # that Passport user
    client_id: str
    client_secret: str

    async def stop(self) -> None:
        """Stop both servers; safe to call more than once."""
        try:
            await self.registration_server.stop()
        finally:
            await self.passport_server.stop()


async def start_moex_registration(
    pki: Pki,
    idp: KeycloakEmulator,
    *,
    passport_port: int = 0,
    api_port: int = 0,
    **settings: Any,
) -> MoexStack:
    """Start MOEX Passport and the registration API over TLS and wire ``idp`` to them.

    ``settings`` named ``users``, ``token_ttl`` or ``redirect`` go to ``MoexPassport``,
    the others to ``RegistrationApi``. The IdP gets the Passport, the PKI's CA as the
    signing CA and a confidential client ``moex_registration`` if it has none.
    """
    passport = MoexPassport(**{k: v for k, v in settings.items() if k in _PASSPORT_SETTINGS})
    registration = RegistrationApi(
        idp.introspect, **{k: v for k, v in settings.items() if k not in _PASSPORT_SETTINGS}
    )
    if not passport.users:
        raise ValueError("MOEX Passport needs at least one user")
    user = next(iter(passport.users))
    # As MOEX's CA does for each Passport user: an RSA certificate in the user's name.
    signer = pki.issue_client("moex-signer", common_name=user)
    passport.register_signer(user, signer.cert)

    idp.passport = passport
    idp.ca_file = pki.ca_file
    secret = idp.clients.get(REGISTRATION_CLIENT_ID)
    if secret is None:  # absent or public: a Passport login needs a client secret
        secret = _DEFAULT_CLIENT_SECRET
        idp.clients[REGISTRATION_CLIENT_ID] = secret

    passport_server = TlsServer(
        passport.app,
        pki.server_ssl_context(pki.issue_server("moex-passport", LOOPBACK_HOSTS)),
        port=passport_port,
    )
    registration_server = TlsServer(
        registration.app,
        pki.server_ssl_context(pki.issue_server("moex-apim", LOOPBACK_HOSTS)),
        port=api_port,
    )
    await passport_server.start()
    try:
        await registration_server.start()
    except BaseException:
        await passport_server.stop()
        raise
    return MoexStack(
        passport=passport,
        passport_server=passport_server,
        registration=registration,
        registration_server=registration_server,
        passport_url=passport_server.url + "/authenticate",
        api_url=registration_server.url,
        signer=signer,
        user=user,
        client_id=REGISTRATION_CLIENT_ID,
        client_secret=secret,
    )
