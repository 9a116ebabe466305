"""The ``auth`` block, one model per flow (a union tagged by ``type``), and the ``signer``
block of the flows that sign (a union tagged by its own ``type``)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    Field,
    SecretStr,
    model_validator,
)

from sidecar.config.errors import SetupError
from sidecar.config.fields import ExistingFile, HttpUrlStr, SecretFiles
from sidecar.config.sections import Tls


class AuthBase(SecretFiles):
    """Fields every token-fetching flow shares."""

    tls: Tls | None = None  # IdP calls; default: the upstream's tls block
    backoff_cap: float = Field(5.0, gt=0, description="seconds between failed logins, at most")
    timeout: float = Field(10.0, gt=0, description="seconds one IdP call may take")


class TokenEndpointAuth(AuthBase):
    """The OAuth2 token endpoint flows."""

    token_url: HttpUrlStr
    client_id: str | None = None
    scope: str | None = None


class OidcPasswordAuth(TokenEndpointAuth):
    type: Literal["oidc_password"]
    client_id: str
    username: str
    password: SecretStr
    client_secret: SecretStr | None = None
    scope: str | None = "openid email profile"


class ClientCredentialsAuth(TokenEndpointAuth):
    type: Literal["client_credentials"]
    client_id: str
    client_secret: SecretStr


class Wso2PasswordAuth(TokenEndpointAuth):
    """WSO2 API Manager (KISC): Basic consumer key/secret + password grant, over mTLS."""

    type: Literal["wso2_password"]
    consumer_key: str
    consumer_secret: SecretStr
    username: str
    password: SecretStr
    scope: str | None = "default"


class CommandSignerConfig(SecretFiles):
    """An external signer (OpenSSL with the GOST engine, CryptoPro cryptcp/csptest).

    ``{in}``/``{out}`` in argv stand for temporary files; without them the data goes to stdin
    and the signature comes from stdout. ``{pin_file}`` stands for a private temporary file
    holding the ``pin`` secret; ``{pin}`` for the secret itself (visible in the process list).
    The program's environment is PATH, HOME and LANG plus ``env``."""

    argv: list[str] = Field(min_length=1)
    timeout: float = Field(10.0, gt=0)
    output: Literal["der", "base64", "pem"] = "der"
    pin: SecretStr | None = None
    env: dict[str, str] = {}

    @model_validator(mode="after")
    def _pin_given(self) -> CommandSignerConfig:
        if any("{pin}" in a or "{pin_file}" in a for a in self.argv) and self.pin is None:
            raise ValueError("argv uses {pin} or {pin_file}: give pin or pin_file")
        return self


class NcaNodeSignerConfig(SecretFiles):
    """NCANode (Kalkan inside) for Kazakh GOST keys: v3 REST, or v2 JSON-RPC."""

    url: HttpUrlStr = "http://127.0.0.1:14579"
    p12_file: ExistingFile
    p12_password: SecretStr
    version: Literal[3, 2] = 3
    timeout: float = Field(10.0, gt=0)


class SignerBase(SecretFiles):
    """How a login challenge is signed into a CMS (PKCS#7) SignedData; one block per ``type``."""

    type: Literal["pkcs7", "command", "ncanode"]
    detached: bool | None = None  # None: what the login flow needs (MOEX: true; MPT: false)

    def check_detached(self, detached: bool) -> None:
        """Refuse at start-up a signature form the signer cannot make."""


class Pkcs7Signing(SignerBase):
    """Built in: a PEM certificate and key, or a PKCS#12 bundle (RSA or EC keys)."""

    type: Literal["pkcs7"]
    cert_file: ExistingFile | None = None
    key_file: ExistingFile | None = None
    key_password: SecretStr | None = None
    p12_file: ExistingFile | None = None
    p12_password: SecretStr | None = None
    digest: Literal["sha224", "sha256", "sha384", "sha512"] = "sha256"
    signed_attributes: bool = True
    include_certificate: bool = True

    @model_validator(mode="after")
    def _complete(self) -> Pkcs7Signing:
        if self.p12_file is None and (self.cert_file is None or self.key_file is None):
            raise ValueError("a pkcs7 signer needs cert_file and key_file, or p12_file")
        if self.p12_file is not None and self.cert_file is not None:
            raise ValueError("give either cert_file/key_file or p12_file, not both")
        return self


class CommandSigning(SignerBase):
    type: Literal["command"]
    command: CommandSignerConfig


class NcaNodeSigning(SignerBase):
    type: Literal["ncanode"]
    ncanode: NcaNodeSignerConfig

    def check_detached(self, detached: bool) -> None:
        """NCANode's v2 cms.sign always attaches the data: refuse what it cannot do."""
        if self.ncanode.version == 2 and detached:
            raise SetupError(
                "signer.ncanode.version 2 cannot make detached signatures (MOEX needs them); "
                "use version 3"
            )


SignerConfig = Annotated[
    Pkcs7Signing | CommandSigning | NcaNodeSigning, Field(discriminator="type")
]


class MoexPassportAuth(TokenEndpointAuth):
    """MOEX Passport two-factor login (docs/protocols.md): Passport token, detached signature."""

    type: Literal["moex_passport"]
    passport_url: HttpUrlStr
    client_id: str
    client_secret: SecretStr
    username: str
    password: SecretStr
    algorithm: Literal["RSA", "GOST"] = "RSA"
    scope: str | None = "client_registration"
    signer: SignerConfig


class MptSigninAuth(AuthBase):
    """ИС МПТ (Kazakhstan marking): sign the server's challenge as an attached CMS
    (docs/protocols.md, "MPT").

    The token's lifetime is its JWT ``exp`` when it is a JWT, else ``token_ttl``."""

    type: Literal["mpt_signin"]
    base_url: HttpUrlStr  # e.g. https://stage.ismet.kz/api/v3/true-api
    signer: SignerConfig
    token_field: str = "token"
    token_ttl: float = Field(3600.0, gt=0)
    extra_fields: dict[str, str | int] = {}  # e.g. {inn: "123456789012"}


class StaticAuth(SecretFiles):
    """A fixed token. ``token_file`` is kept as a path: it is re-read when it changes."""

    type: Literal["static"]
    token: SecretStr | None = None
    token_file: ExistingFile | None = None

    @model_validator(mode="after")
    def _one_source(self) -> StaticAuth:
        if (self.token is None) == (self.token_file is None):
            raise ValueError("static auth needs exactly one of token or token_file")
        return self


Auth = Annotated[
    OidcPasswordAuth
    | ClientCredentialsAuth
    | Wso2PasswordAuth
    | MoexPassportAuth
    | MptSigninAuth
    | StaticAuth,
    Field(discriminator="type"),
]


PLAINTEXT_ERROR = "plaintext_credentials"


def credential_urls(auth: AuthBase | StaticAuth) -> dict[str, str]:
    """The IdP URLs an auth block sends credentials or signatures to, by field name."""
    urls: dict[str, str] = {}
    if isinstance(auth, MoexPassportAuth):
        urls["passport_url"] = auth.passport_url
    if isinstance(auth, TokenEndpointAuth):
        urls["token_url"] = auth.token_url
    if isinstance(auth, MptSigninAuth):
        urls["base_url"] = auth.base_url
    return urls
