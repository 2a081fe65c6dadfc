"""A SAML identity provider for the tests, built with pysaml2 (the library our SP uses), its keys made here.

``TestIdp.respond`` is pysaml2's own IdP (``saml2.server.Server.create_authn_response``): the genuine article.
``TestIdp.craft`` builds a Response field by field with pysaml2's classes and signs it with the same key and
the same ``xmlsec1`` calls, so each negative test can get exactly one thing wrong.

Signing and verifying need the ``xmlsec1`` program: :func:`require_xmlsec1` skips a test without it (fails it
when ``BITNET_TEST_REQUIRE_OPS_TOOLS=1``, as CI sets).
"""

from __future__ import annotations

import base64
import warnings
import zlib
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from saml2 import BINDING_HTTP_POST, BINDING_HTTP_REDIRECT, class_name, saml, samlp
from saml2.config import IdPConfig
from saml2.s_utils import sid
from saml2.sigver import pre_signature_part, security_context

from bitnet_actor.services.saml import xmlsec_binary
from tests.ops._tools import require

if TYPE_CHECKING:
    from pathlib import Path

SHA256_RSA = "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256"
SHA256 = "http://www.w3.org/2001/04/xmlenc#sha256"
SHA1_RSA = "http://www.w3.org/2000/09/xmldsig#rsa-sha1"
SHA1 = "http://www.w3.org/2000/09/xmldsig#sha1"
EMAIL_FORMAT = saml.NAMEID_FORMAT_EMAILADDRESS
PERSISTENT = saml.NAMEID_FORMAT_PERSISTENT


def require_xmlsec1() -> str:
    """The ``xmlsec1`` path, or a skip (a failure under BITNET_TEST_REQUIRE_OPS_TOOLS=1)."""
    found = xmlsec_binary()
    require(found, "xmlsec1 is not installed (Debian package xmlsec1): SAML signatures cannot be made or checked")
    assert found is not None
    return found


def make_certificate(common_name: str, *, key_size: int = 2048, days: int = 30) -> tuple[bytes, str]:
    """A new RSA key (PKCS#8 PEM) and a self-signed certificate for it (PEM)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=key_size)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=days))
        .sign(key, hashes.SHA256())
    )
    pem_key = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return pem_key, cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


def _server_class() -> Any:
    # pysaml2's IdP module touches a cipher mode that cryptography deprecated (CFB) at import.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from saml2.server import Server
    return Server


def _instant(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class SeenRequest:
    """An AuthnRequest as the IdP received it."""

    id: str
    sp_entity_id: str
    acs_url: str
    destination: str
    relay_state: str
    xml: str


@dataclass
class TestIdp:
    """One identity provider with its own key; trusts the SPs whose metadata it was given."""

    directory: Path
    entity_id: str = "https://idp.example.test/metadata"
    sso_url: str = "https://idp.example.test/sso"
    name: str = "idp"
    sp_metadata: list[str] = field(default_factory=list)

    __test__ = False  # not a test class, whatever its name

    def __post_init__(self) -> None:
        key, self.cert_pem = make_certificate(f"{self.name}.example.test")
        self.key_file = self.directory / f"{self.name}.key"
        self.cert_file = self.directory / f"{self.name}.crt"
        self.key_file.write_bytes(key)
        self.cert_file.write_text(self.cert_pem)
        self._server: Any = None

    def _config(self) -> IdPConfig:
        config = IdPConfig()
        config.load(
            {
                "entityid": self.entity_id,
                "xmlsec_binary": require_xmlsec1(),
                "key_file": str(self.key_file),
                "cert_file": str(self.cert_file),
                "signing_algorithm": SHA256_RSA,
                "digest_algorithm": SHA256,
                "service": {
                    "idp": {
                        "endpoints": {"single_sign_on_service": [(self.sso_url, BINDING_HTTP_REDIRECT)]},
                        "policy": {"default": {"lifetime": {"minutes": 5}, "attribute_restrictions": None}},
                        "name_id_format": [EMAIL_FORMAT],
                        "want_authn_requests_signed": False,
                    }
                },
                "metadata": {"inline": list(self.sp_metadata)} if self.sp_metadata else {},
            }
        )
        return config

    def trust(self, metadata_xml: str) -> None:
        """Accept AuthnRequests from (and answer) the SP of this metadata."""
        document = metadata_xml.split("?>", 1)[-1].strip()
        if document not in self.sp_metadata:
            self.sp_metadata.append(document)
            self._server = None

    @property
    def server(self) -> Any:
        """pysaml2's IdP, trusting the SPs given to :meth:`trust`."""
        if self._server is None:
            self._server = _server_class()(config=self._config())
        return self._server

    @property
    def sec(self) -> Any:
        """pysaml2's security context with this IdP's key (what signs)."""
        return security_context(self._config())

    # -- the protocol ----------------------------------------------------------------------------------

    def read_request(self, redirect_url: str) -> SeenRequest:
        """Receive an AuthnRequest of the HTTP-Redirect binding (pysaml2 checks it against the SP's metadata)."""
        assert redirect_url.startswith(self.sso_url + "?"), redirect_url
        query = parse_qs(urlsplit(redirect_url).query)
        assert set(query) == {"SAMLRequest", "RelayState"}, query
        seen = self.server.parse_authn_request(query["SAMLRequest"][0], BINDING_HTTP_REDIRECT)
        message = seen.message
        xml = zlib.decompress(base64.b64decode(query["SAMLRequest"][0]), -15).decode()
        return SeenRequest(
            id=message.id,
            sp_entity_id=message.issuer.text,
            acs_url=message.assertion_consumer_service_url,
            destination=message.destination,
            relay_state=query["RelayState"][0],
            xml=xml,
        )

    def respond(self, request: SeenRequest, *, email: str, name: str = "Ann Example", **kwargs: Any) -> str:
        """pysaml2's own signed response (base64, as the POST binding sends it); attributes mail, displayName."""
        args = self.server.response_args(self._parsed(request))
        response = self.server.create_authn_response(
            {"mail": [email], "displayName": [name]},
            userid=email,
            authn={"class_ref": saml.AUTHN_PASSWORD_PROTECTED},
            sign_assertion=kwargs.pop("sign_assertion", True),
            sign_response=kwargs.pop("sign_response", False),
            sign_alg=SHA256_RSA,
            digest_alg=SHA256,
            **args,
            **kwargs,
        )
        return base64.b64encode(str(response).encode()).decode()

    def _parsed(self, request: SeenRequest) -> Any:
        return samlp.authn_request_from_string(request.xml)

    def craft(
        self,
        request: SeenRequest,
        *,
        email: str,
        name_id: str | None = None,
        name_id_format: str = EMAIL_FORMAT,
        attributes: dict[str, str] | None = None,
        issuer: str | None = None,
        assertion_issuer: str | None = None,
        audience: str | None = None,
        recipient: str | None = None,
        destination: str | None = "",
        in_response_to: str | None = "",
        valid_from: timedelta = timedelta(minutes=-1),
        valid_for: timedelta = timedelta(minutes=5),
        confirmation_valid_for: timedelta | None = None,
        issued: timedelta = timedelta(0),
        sign: str = "assertion",  # "assertion", "response", "both" or "none"
        sign_alg: str = SHA256_RSA,
        digest_alg: str = SHA256,
        status: str = samlp.STATUS_SUCCESS,
    ) -> str:
        """A Response made field by field (base64); every default is what a correct IdP sends.

        ``destination`` / ``in_response_to``: "" means the request's, None leaves the attribute out.
        """
        now = datetime.now(UTC)
        entity = issuer or self.entity_id
        answered = request.id if in_response_to == "" else in_response_to
        confirmation_until = now + (confirmation_valid_for if confirmation_valid_for is not None else valid_for)
        assertion = saml.Assertion(
            id=sid(),
            version="2.0",
            issue_instant=_instant(now + issued),
            issuer=saml.Issuer(text=assertion_issuer or entity, format=saml.NAMEID_FORMAT_ENTITY),
            subject=saml.Subject(
                name_id=saml.NameID(format=name_id_format, text=name_id or email),
                subject_confirmation=[
                    saml.SubjectConfirmation(
                        method=saml.SCM_BEARER,
                        subject_confirmation_data=saml.SubjectConfirmationData(
                            in_response_to=answered,
                            recipient=recipient or request.acs_url,
                            not_on_or_after=_instant(confirmation_until),
                        ),
                    )
                ],
            ),
            conditions=saml.Conditions(
                not_before=_instant(now + valid_from),
                not_on_or_after=_instant(now + valid_for),
                audience_restriction=[
                    saml.AudienceRestriction(audience=[saml.Audience(text=audience or request.sp_entity_id)])
                ],
            ),
            authn_statement=[
                saml.AuthnStatement(
                    authn_instant=_instant(now + issued),
                    session_index=sid(),
                    authn_context=saml.AuthnContext(
                        authn_context_class_ref=saml.AuthnContextClassRef(text=saml.AUTHN_PASSWORD_PROTECTED)
                    ),
                )
            ],
            attribute_statement=[
                saml.AttributeStatement(
                    attribute=[
                        saml.Attribute(
                            name=key,
                            name_format=saml.NAME_FORMAT_BASIC,
                            attribute_value=[saml.AttributeValue(text=value)],
                        )
                        for key, value in (attributes or {"mail": email, "displayName": "Ann Example"}).items()
                    ]
                )
            ],
        )
        response = samlp.Response(
            id=sid(),
            version="2.0",
            issue_instant=_instant(now + issued),
            destination=request.acs_url if destination == "" else destination,
            in_response_to=answered,
            issuer=saml.Issuer(text=entity, format=saml.NAMEID_FORMAT_ENTITY),
            status=samlp.Status(status_code=samlp.StatusCode(value=status)),
            assertion=[assertion],
        )
        sec = self.sec
        if sign in ("assertion", "both"):
            assertion.signature = pre_signature_part(
                assertion.id, sec.my_cert, 1, digest_alg=digest_alg, sign_alg=sign_alg
            )
        if sign in ("response", "both"):
            response.signature = pre_signature_part(
                response.id, sec.my_cert, 2, digest_alg=digest_alg, sign_alg=sign_alg
            )
        xml = str(response)
        if sign in ("assertion", "both"):
            xml = sec.sign_statement(xml, class_name(assertion), node_id=assertion.id)
        if sign in ("response", "both"):
            xml = sec.sign_statement(xml, class_name(response), node_id=response.id)
        return encode(xml)


def encode(xml: str | bytes) -> str:
    """Base64, as the HTTP-POST binding carries a message."""
    return base64.b64encode(xml.encode() if isinstance(xml, str) else xml).decode()


def decode(value: str) -> str:
    """The XML of a base64 message."""
    return base64.b64decode(value).decode()


__all__ = [
    "BINDING_HTTP_POST",
    "EMAIL_FORMAT",
    "PERSISTENT",
    "SHA1",
    "SHA1_RSA",
    "SeenRequest",
    "TestIdp",
    "decode",
    "encode",
    "make_certificate",
    "require_xmlsec1",
]
