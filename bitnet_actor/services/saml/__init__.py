"""SAML 2.0 single sign-on for organizations: SP-initiated, HTTP-Redirect AuthnRequest, HTTP-POST response.

Each organization configures its own identity provider (entity id, SSO URL, signing certificates, attribute
names, allowed email domains, the role of members provisioned just in time); each is its own service
provider with its own entity id and ACS URL. The service provider holds no key (see :mod:`._sp` for why).

Modules (private; import from here): :mod:`._config` (the configuration and its store), :mod:`._sp` (our
endpoints, metadata, pysaml2 clients), :mod:`._verify` (every check a response must pass),
:mod:`._provision` (which user an identity is), :mod:`._login` (:class:`SamlService`, the flow), and
:mod:`._errors` (why a sign-in was refused).

Callers (the HTTP API, the portal) use :class:`SamlService` from ``handles().auth.saml``: ``endpoints``,
``metadata``, ``get_config`` / ``put_config`` (with a :class:`SamlConfigUpdate`) / ``delete_config``,
``begin_login`` and ``complete_login``; they start the session themselves.
"""

from __future__ import annotations

from bitnet_actor.services.saml._config import (
    DEFAULT_ROLES,
    IdpCertificate,
    SamlConfig,
    SamlConfigUpdate,
)
from bitnet_actor.services.saml._errors import (
    RESPONSE_REASONS,
    SamlAccountError,
    SamlDisabledError,
    SamlError,
    SamlNotConfiguredError,
    SamlRequestError,
    SamlResponseError,
    SamlUnavailableError,
)
from bitnet_actor.services.saml._login import REQUEST_TTL_S, SamlLogin, SamlService, safe_return_to
from bitnet_actor.services.saml._sp import CLOCK_SKEW_S, SpEndpoints, sp_client, xmlsec_binary
from bitnet_actor.services.saml._verify import VerifiedAssertion, decode_response, verify_response

__all__ = [
    "CLOCK_SKEW_S",
    "DEFAULT_ROLES",
    "REQUEST_TTL_S",
    "RESPONSE_REASONS",
    "IdpCertificate",
    "SamlAccountError",
    "SamlConfig",
    "SamlConfigUpdate",
    "SamlDisabledError",
    "SamlError",
    "SamlLogin",
    "SamlNotConfiguredError",
    "SamlRequestError",
    "SamlResponseError",
    "SamlService",
    "SamlUnavailableError",
    "SpEndpoints",
    "VerifiedAssertion",
    "decode_response",
    "safe_return_to",
    "sp_client",
    "verify_response",
    "xmlsec_binary",
]
