"""Our side of SAML (the service provider): endpoints per organization, metadata, and pysaml2 clients.

Every organization is its own service provider: entity id ``{base}/api/v1/saml/{org}/metadata`` (the metadata
URL, as is customary), assertion consumer service ``{base}/api/v1/saml/{org}/acs`` (HTTP-POST binding). An
assertion made for one organization therefore names another audience and recipient than any other's.

The SP holds no key. It signs nothing: AuthnRequests go unsigned (the Redirect binding's signature is optional,
and an unsigned request only lets someone start a login at the IdP, which anyone can anyway), and encrypted
assertions are not offered (the metadata has no encryption key; the IdP's signature, checked against the
configured certificates, is what makes an assertion trustworthy). No key means none to generate, store
encrypted, rotate or leak. ``AuthnRequestsSigned="false"`` and ``WantAssertionsSigned="true"`` say so in the
metadata.

pysaml2 builds the AuthnRequest and checks signatures through the ``xmlsec1`` program; :func:`xmlsec_binary`
finds it (None: this server cannot take SAML sign-ins, though configurations and metadata still work).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from saml2 import BINDING_HTTP_POST, BINDING_HTTP_REDIRECT, md, samlp
from saml2 import xmldsig as ds
from saml2.client import Saml2Client
from saml2.config import SPConfig
from saml2.metadata import entity_descriptor
from saml2.saml import NAMEID_FORMAT_EMAILADDRESS

from bitnet_actor.services.saml._errors import SamlUnavailableError

if TYPE_CHECKING:
    from uuid import UUID

    from bitnet_actor.services.saml._config import SamlConfig

__all__ = ["CLOCK_SKEW_S", "SpEndpoints", "authn_request", "sp_client", "sp_metadata", "xmlsec_binary"]

CLOCK_SKEW_S: Final = 60
"""How far our clock and the IdP's may disagree (NotBefore, NotOnOrAfter, IssueInstant)."""


@dataclass(frozen=True, slots=True)
class SpEndpoints:
    """Our service provider's URLs for one organization."""

    entity_id: str
    acs_url: str
    metadata_url: str
    login_url: str

    @classmethod
    def for_org(cls, base_url: str, org_id: UUID) -> SpEndpoints:
        """The endpoints of ``org_id`` under ``base_url`` (the server's public URL)."""
        root = f"{base_url.rstrip('/')}/api/v1/saml/{org_id}"
        return cls(
            entity_id=f"{root}/metadata",
            acs_url=f"{root}/acs",
            metadata_url=f"{root}/metadata",
            login_url=f"{root}/login",
        )


def xmlsec_binary() -> str | None:
    """The path of the ``xmlsec1`` program (Debian package ``xmlsec1``), or None."""
    return shutil.which("xmlsec1")


def _idp_metadata(config: SamlConfig) -> str:
    """The configured IdP as a SAML metadata document (what pysaml2 trusts: this entity id, these keys)."""
    keys = [
        md.KeyDescriptor(
            use="signing",
            key_info=ds.KeyInfo(x509_data=[ds.X509Data(x509_certificate=ds.X509Certificate(text=cert.der_base64))]),
        )
        for cert in config.certificates()
    ]
    descriptor = md.EntityDescriptor(
        entity_id=config.idp_entity_id,
        idpsso_descriptor=[
            md.IDPSSODescriptor(
                protocol_support_enumeration=samlp.NAMESPACE,
                key_descriptor=keys,
                single_sign_on_service=[
                    md.SingleSignOnService(binding=BINDING_HTTP_REDIRECT, location=config.idp_sso_url)
                ],
            )
        ],
    )
    return str(descriptor)


def _sp_config(sp: SpEndpoints, config: SamlConfig | None, xmlsec: str | None) -> SPConfig:
    """pysaml2's configuration: for metadata when ``config`` is None, else for talking to its IdP."""
    settings: dict[str, Any] = {
        "entityid": sp.entity_id,
        "accepted_time_diff": CLOCK_SKEW_S,
        "only_use_keys_in_metadata": True,  # never a key that came inside the message
        "delete_tmpfiles": True,
        "service": {
            "sp": {
                "endpoints": {"assertion_consumer_service": [(sp.acs_url, BINDING_HTTP_POST)]},
                "authn_requests_signed": False,
                # pysaml2 wants a signed Response by default; we take the Response or the Assertion signed,
                # and the metadata asks IdPs for signed assertions (what most sign by default).
                "want_response_signed": False,
                "want_assertions_signed": config is None,
                "want_assertions_or_response_signed": True,
                "allow_unsolicited": False,
                "allow_unknown_attributes": True,
                "name_id_format": [NAMEID_FORMAT_EMAILADDRESS],
            }
        },
    }
    if xmlsec is not None:
        settings["xmlsec_binary"] = xmlsec
    if config is not None:
        settings["metadata"] = {"inline": [_idp_metadata(config)]}
    sp_config = SPConfig()
    sp_config.load(settings)
    return sp_config


def sp_metadata(sp: SpEndpoints) -> str:
    """Our SAML metadata document for one organization (give it, or its URL, to the IdP)."""
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + str(entity_descriptor(_sp_config(sp, None, None)))


def sp_client(sp: SpEndpoints, config: SamlConfig) -> Saml2Client:
    """A pysaml2 client trusting only ``config``'s IdP (blocking: run it in a worker thread).

    Raises:
        SamlUnavailableError: ``xmlsec1`` is not installed.
    """
    xmlsec = xmlsec_binary()
    if xmlsec is None:
        raise SamlUnavailableError()
    return Saml2Client(config=_sp_config(sp, config, xmlsec))


def authn_request(sp: SpEndpoints, config: SamlConfig, *, relay_state: str) -> tuple[str, str]:
    """An AuthnRequest to ``config``'s IdP in the HTTP-Redirect binding (blocking: run it in a worker thread).

    Returns:
        (the request's ID, the URL to send the browser to; it carries ``SAMLRequest`` and ``RelayState``).

    Raises:
        SamlUnavailableError: ``xmlsec1`` is not installed.
    """
    client = sp_client(sp, config)
    request_id, info = client.prepare_for_authenticate(
        entityid=config.idp_entity_id, relay_state=relay_state, binding=BINDING_HTTP_REDIRECT
    )
    location = dict(info["headers"])["Location"]
    return str(request_id), str(location)
