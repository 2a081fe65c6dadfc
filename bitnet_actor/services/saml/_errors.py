"""Why a SAML sign-in was refused: one tree, each error with a stable ``reason`` and a sentence safe to show.

The tree::

    SamlError (BitnetError)         ``reason``: a stable code (``saml_<reason>`` in the HTTP API)
    ├── SamlNotConfiguredError      the organization has no SAML configuration (or does not exist)
    ├── SamlDisabledError           it has one, switched off
    ├── SamlUnavailableError        this server cannot verify signatures (the xmlsec1 program is missing)
    ├── SamlRequestError            the browser's request is malformed: return path, RelayState, form fields
    ├── SamlResponseError           the IdP's response failed verification (signature, issuer, audience, ...)
    └── SamlAccountError            a verified identity that may not sign in here (email domain, account)
"""

from __future__ import annotations

from typing import Final

from bitnet_actor.errors import BitnetError

__all__ = [
    "RESPONSE_REASONS",
    "SamlAccountError",
    "SamlDisabledError",
    "SamlError",
    "SamlNotConfiguredError",
    "SamlRequestError",
    "SamlResponseError",
    "SamlUnavailableError",
]

RESPONSE_REASONS: Final = frozenset(
    {
        "malformed",  # not base64, not XML, not a Response, DTDs, comments or processing instructions
        "signature_wrapping",  # more than one assertion, repeated IDs, signatures in odd places
        "encrypted_assertion",  # we hold no key to decrypt with
        "idp_status",  # the IdP answered with a non-success status
        "unsigned",  # neither the Response nor the Assertion is signed
        "bad_signature",  # a signature that does not verify with the configured certificates
        "weak_algorithm",  # SHA-1 or an unknown signature / digest algorithm
        "wrong_issuer",
        "wrong_destination",
        "wrong_audience",
        "wrong_recipient",
        "expired",
        "not_yet_valid",
        "unsolicited",  # no InResponseTo: IdP-initiated login is not accepted
        "unknown_request",  # InResponseTo names no outstanding request of this organization
        "browser_mismatch",  # the login was started in another browser
        "replayed",  # this assertion was used before
        "no_subject",
        "no_email",
        "rejected",  # pysaml2's own profile checks refused what ours let through
    }
)


class SamlError(BitnetError):
    """A SAML sign-in was refused.

    Args:
        reason: a stable code for programs and the audit log.
        message: one sentence for the person signing in; never secrets or another tenant's data.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class SamlNotConfiguredError(SamlError):
    """No SAML configuration for this organization (also what an unknown organization looks like)."""

    def __init__(self, message: str = "single sign-on is not configured for this organization") -> None:
        super().__init__("not_configured", message)


class SamlDisabledError(SamlError):
    """The organization's SAML configuration is switched off."""

    def __init__(self, message: str = "single sign-on is switched off for this organization") -> None:
        super().__init__("disabled", message)


class SamlUnavailableError(SamlError):
    """This server cannot verify XML signatures: the ``xmlsec1`` program is not installed."""

    def __init__(self, message: str = "SAML sign-in is unavailable on this server (xmlsec1 is not installed)") -> None:
        super().__init__("unavailable", message)


class SamlRequestError(SamlError):
    """The browser's request is malformed (``reason``: invalid_return_to, invalid_relay_state, missing_response)."""


class SamlResponseError(SamlError):
    """The identity provider's response failed verification; ``reason`` is one of :data:`RESPONSE_REASONS`."""

    def __init__(self, reason: str, message: str) -> None:
        assert reason in RESPONSE_REASONS, reason
        super().__init__(reason, message)


class SamlAccountError(SamlError):
    """A verified identity that may not sign in here (``reason``: email_domain, account_exists,
    account_disabled)."""
