"""The ``auth`` block, one model per flow (a union tagged by ``type``), and the ``signer``
block of the flows that sign (a union tagged by its own ``type``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    Field,
    ModelWrapValidatorHandler,
    SecretStr,
    model_validator,
)

from sidecar.config.errors import SetupError
from sidecar.config.fields import ExistingFile, HttpUrlStr, SecretFiles
from sidecar.config.json_login import (
    PLACEHOLDER,
    SECRET_NAME,
    AnswerParts,
    FailureRules,
    LoginRequest,
    token_header_problem,
)
from sidecar.config.sections import Tls


class AuthBase(SecretFiles):
    """Fields every token-fetching flow shares."""

    tls: Tls | None = None  # IdP calls; default: the upstream's tls block
    backoff_cap: float = Field(5.0, gt=0, description="seconds between failed logins, at most")
    # A login whose credentials the IdP refused (a 4xx) is not retried soon: that cannot fix
    # it, and IdPs lock accounts that keep trying. The wait doubles up to the cap.
    refused_backoff: float = Field(30.0, gt=0, description="seconds after refused credentials")
    refused_backoff_cap: float = Field(600.0, gt=0, description="the longest such wait")
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


class JsonLoginAuth(AuthBase):
    """A login of the API's own, described in config (see :mod:`sidecar.config.json_login`).

    ``secrets`` adds named secrets (``name: value`` or ``name_file: path``); each name, like
    ``username`` and ``password``, is a placeholder ``{name}`` in the login's body and
    headers. ``{refresh_token}`` exists in ``refresh`` only."""

    type: Literal["json_login"]
    login: LoginRequest
    refresh: LoginRequest | None = None
    username: str | None = None
    password: SecretStr | None = None
    secrets: dict[str, SecretStr] = {}
    answer: AnswerParts = AnswerParts()
    failure: FailureRules = FailureRules()
    token_ttl: float | None = Field(None, gt=0, description="lifetime when nothing says")
    token_header: str = Field("Authorization", pattern=r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
    token_prefix: str = "Bearer "

    @model_validator(mode="wrap")
    @classmethod
    def _secret_files_by_name(cls, data: Any, handler: ModelWrapValidatorHandler[Any]) -> Any:
        """``secrets.name_file: path`` becomes ``secrets.name`` (the file's content)."""
        if not isinstance(data, dict) or not isinstance(data.get("secrets"), dict):
            return handler(data)
        data, named, paths = dict(data), {}, {}
        for key, value in data["secrets"].items():
            if not (isinstance(key, str) and key.endswith("_file")):
                named[key] = value
                continue
            name = key.removesuffix("_file")
            if name in data["secrets"]:
                raise ValueError(f"secrets: give either {name} or {key}, not both")
            try:
                named[name] = Path(str(value)).read_text(encoding="utf-8").rstrip("\r\n")
            except (OSError, UnicodeDecodeError) as exc:
                why = "not UTF-8 text" if isinstance(exc, UnicodeDecodeError) else exc.strerror
                raise ValueError(f"secrets.{key}: cannot read {value}: {why}") from None
            paths[f"secrets.{key}"] = Path(str(value))
        data["secrets"] = named
        model = handler(data)
        model._secret_files = {**model._secret_files, **paths}
        return model

    @model_validator(mode="after")
    def _placeholders_known(self) -> JsonLoginAuth:
        for name in self.secrets:
            if not SECRET_NAME.match(name) or name in ("username", "password", "refresh_token"):
                raise ValueError(
                    f"secrets.{name}: a secret's name is lower-case letters, digits and _, "
                    "and not username, password or refresh_token"
                )
        known = {"username"} if self.username is not None else set()
        known |= {"password"} if self.password is not None else set()
        known |= set(self.secrets)
        self._check_request("login", self.login, known)
        if self.refresh is not None:
            used = self._check_request("refresh", self.refresh, known | {"refresh_token"})
            if "refresh_token" not in used:
                raise ValueError(
                    "refresh never uses {refresh_token}: put it in refresh.json, "
                    "refresh.form or refresh.headers"
                )
            if self.answer.refresh_token is None:
                raise ValueError(
                    "refresh needs answer.refresh_token: where the login's answer keeps it "
                    "(e.g. /refresh_token)"
                )
        problem = token_header_problem(self.token_header, self.token_prefix)
        if problem:
            raise ValueError(problem)
        return self

    @staticmethod
    def _check_request(where: str, request: LoginRequest, known: set[str]) -> set[str]:
        used: set[str] = set()
        for field, text in request.strings():
            for name in PLACEHOLDER.findall(text):
                if name in ("username", "password") and name not in known:
                    raise ValueError(f"{where}.{field} uses {{{name}}}: give {name} "
                                     f"(or {name}_file) in the auth block")
                if name not in known:
                    names = ", ".join("{" + n + "}" for n in sorted(known)) or "none"
                    raise ValueError(
                        f"{where}.{field}: unknown placeholder {{{name}}}; known: {names} "
                        f"(add it under secrets)"
                    )
                used.add(name)
        return used


Auth = Annotated[
    OidcPasswordAuth
    | ClientCredentialsAuth
    | Wso2PasswordAuth
    | MoexPassportAuth
    | MptSigninAuth
    | JsonLoginAuth
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
    if isinstance(auth, JsonLoginAuth):
        urls["login.url"] = auth.login.url
        if auth.refresh is not None:
            urls["refresh.url"] = auth.refresh.url
    return urls
