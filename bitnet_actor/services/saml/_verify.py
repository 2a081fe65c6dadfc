"""Verifying an IdP's SAML Response (HTTP-POST binding) for one organization: blocking, run in a worker thread.

In order, each step refusing with a :class:`SamlResponseError` whose ``reason`` says which rule failed:

1. **Shape**, on our own strict parse (defusedxml: no DTD, no entities; comments and processing instructions
   refused too, since a comment inside a signed value is how the NameID-truncation attacks work): a
   ``samlp:Response`` with exactly one ``saml:Assertion``, its direct child; no ``EncryptedAssertion``; no ID
   value twice anywhere; signatures only directly in the Response or the Assertion, one each, with SHA-2
   algorithms. This is what makes signature wrapping impossible: the one assertion we read is the one element
   with its ID, so the element xmlsec verified is the element we use.
2. **Status** (checked within step 1, before the assertion count: error responses carry no assertion): a
   non-success status is the IdP's refusal (nothing in it is trusted, so no signature needed).
3. **Signature**, by pysaml2 and ``xmlsec1`` with the configured certificates only (never a key in the
   message): the Response's if present, the Assertion's if present, and at least one of them.
4. **Rules** on the verified objects: Issuer of the Response (if any) and the Assertion = the configured
   entity id; Destination (required when the Response is signed) = our ACS URL; IssueInstants,
   Conditions NotBefore / NotOnOrAfter within :data:`CLOCK_SKEW_S`; every AudienceRestriction names our SP;
   a bearer SubjectConfirmation with Recipient = our ACS URL, InResponseTo = the Response's, a NotOnOrAfter
   still ahead; exactly one AuthnStatement, its SessionNotOnOrAfter ahead; an InResponseTo at all (no
   IdP-initiated logins).
5. **Second opinion**: pysaml2's own Web SSO profile checks on the whole message (``rejected`` if it refuses
   what ours accepted).

What is left to the caller: that InResponseTo is an outstanding request of this organization, from this
browser, and that the assertion was not used before (Redis, in :mod:`._login`).
"""

from __future__ import annotations

import base64
import binascii
import logging
import traceback
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import DefusedXMLParser
from saml2 import BINDING_HTTP_POST, class_name, samlp
from saml2.saml import SCM_BEARER
from saml2.validate import valid_instance

from bitnet_actor.services.saml._errors import SamlResponseError
from bitnet_actor.services.saml._sp import CLOCK_SKEW_S

if TYPE_CHECKING:
    from saml2.client import Saml2Client

    from bitnet_actor.services.saml._config import SamlConfig
    from bitnet_actor.services.saml._sp import SpEndpoints

__all__ = ["MAX_RESPONSE_CHARS", "VerifiedAssertion", "decode_response", "verify_response"]

log = logging.getLogger(__name__)
# pysaml2 logs each refusal at ERROR with the whole (attacker-supplied) document; our own verdict is logged
# and audited instead.
logging.getLogger("saml2").setLevel(logging.CRITICAL)

MAX_RESPONSE_CHARS: Final = 512 * 1024  # base64; real responses are a few KiB
MAX_AGE: Final = timedelta(minutes=10)  # a response is never older than the request it answers (REQUEST_TTL_S)
_SKEW: Final = timedelta(seconds=CLOCK_SKEW_S)
_P: Final = "{urn:oasis:names:tc:SAML:2.0:protocol}"
_A: Final = "{urn:oasis:names:tc:SAML:2.0:assertion}"
_DS: Final = "{http://www.w3.org/2000/09/xmldsig#}"
_ID_ATTRIBUTES: Final = frozenset({"ID", "Id", "id", "{http://www.w3.org/XML/1998/namespace}id"})
_SIGNATURE_ALGORITHMS: Final = frozenset(
    {
        "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256",
        "http://www.w3.org/2001/04/xmldsig-more#rsa-sha384",
        "http://www.w3.org/2001/04/xmldsig-more#rsa-sha512",
        "http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha256",
        "http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha384",
        "http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha512",
    }
)
_DIGEST_ALGORITHMS: Final = frozenset(
    {
        "http://www.w3.org/2001/04/xmlenc#sha256",
        "http://www.w3.org/2001/04/xmldsig-more#sha384",
        "http://www.w3.org/2001/04/xmlenc#sha512",
    }
)


@dataclass(frozen=True, slots=True)
class VerifiedAssertion:
    """What a verified assertion says."""

    assertion_id: str
    in_response_to: str
    issuer: str
    name_id: str
    name_id_format: str | None
    attributes: dict[str, tuple[str, ...]]  # by Name and by FriendlyName
    not_on_or_after: datetime  # when it stops being usable: the replay guard remembers it until then
    session_index: str | None

    def attribute(self, name: str) -> str | None:
        """The first non-empty value of attribute ``name`` (its Name or FriendlyName)."""
        return next((v for v in self.attributes.get(name, ()) if v), None)


def _drop_frames(exc: BaseException) -> None:
    """Clear the finished frames of a pysaml2 failure and its causes, so the temporary files it left in their
    locals (certificates written for xmlsec1) close now rather than in the cycle collector (which warns)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        traceback.clear_frames(current.__traceback__)
        current = current.__cause__ or current.__context__


def _refuse(reason: str, message: str) -> SamlResponseError:
    return SamlResponseError(reason, message)


def decode_response(value: str) -> bytes:
    """The XML of a ``SAMLResponse`` form field (base64; line breaks allowed).

    Raises:
        SamlResponseError: malformed (not base64, or too large).
    """
    if len(value) > MAX_RESPONSE_CHARS:
        raise _refuse("malformed", "the SAML response is too large")
    try:
        return base64.b64decode("".join(value.split()), validate=True)
    except (binascii.Error, ValueError):
        raise _refuse("malformed", "the SAML response is not base64") from None


def _parse_strict(raw: bytes) -> ET.Element:
    parser = DefusedXMLParser(
        target=ET.TreeBuilder(insert_comments=True, insert_pis=True),
        forbid_dtd=True,
        forbid_entities=True,
        forbid_external=True,
    )
    try:
        parser.feed(raw)
        root: ET.Element = parser.close()
    except (DefusedXmlException, ET.ParseError) as exc:
        raise _refuse("malformed", f"the SAML response is not acceptable XML ({type(exc).__name__})") from None
    return root


def _check_status(root: ET.Element) -> None:
    code = root.find(f"{_P}Status/{_P}StatusCode")
    value = code.get("Value") if code is not None else None
    if value == samlp.STATUS_SUCCESS:
        return
    inner = code.find(f"{_P}StatusCode") if code is not None else None  # the specific reason, if given
    words = [
        (inner.get("Value") if inner is not None else None) or value or "no status",
        (root.findtext(f"{_P}Status/{_P}StatusMessage") or "").strip(),
    ]
    detail = " ".join(w[:200] for w in words if w)
    raise _refuse("idp_status", f"the identity provider refused the sign-in: {detail}")


def _check_shape(root: ET.Element) -> None:
    if root.tag != _P + "Response":
        raise _refuse("malformed", "the message is not a SAML Response")
    parents = {child: parent for parent in root.iter() for child in parent}
    seen: set[str] = set()
    for element in root.iter():
        if not isinstance(element.tag, str):  # the tag of a comment or processing instruction is a function
            raise _refuse("malformed", "comments and processing instructions are not accepted in a SAML response")
        for name, value in element.attrib.items():
            if name in _ID_ATTRIBUTES:
                if value in seen:
                    raise _refuse("signature_wrapping", "an ID appears twice in the SAML response")
                seen.add(value)
    _check_status(root)
    if next(root.iter(_A + "EncryptedAssertion"), None) is not None:
        raise _refuse("encrypted_assertion", "encrypted assertions are not supported: configure the IdP to sign only")
    assertions = list(root.iter(_A + "Assertion"))
    if len(assertions) != 1 or parents.get(assertions[0]) is not root:
        raise _refuse("signature_wrapping", "the SAML response must hold exactly one Assertion, directly")
    holders: list[ET.Element] = []
    for signature in root.iter(_DS + "Signature"):
        holder = parents.get(signature)
        if holder not in (root, assertions[0]) or holder in holders:
            raise _refuse("signature_wrapping", "a signature is where no signature belongs")
        assert holder is not None
        holders.append(holder)
        method = signature.find(f"{_DS}SignedInfo/{_DS}SignatureMethod")
        digests = signature.findall(f"{_DS}SignedInfo/{_DS}Reference/{_DS}DigestMethod")
        if (
            method is None
            or method.get("Algorithm") not in _SIGNATURE_ALGORITHMS
            or not digests
            or any(d.get("Algorithm") not in _DIGEST_ALGORITHMS for d in digests)
        ):
            raise _refuse(
                "weak_algorithm", "the signature uses SHA-1 or an unknown algorithm: use RSA or ECDSA with SHA-256"
            )


def _instant(value: object, what: str) -> datetime:
    if not isinstance(value, str):
        raise _refuse("malformed", f"{what} is missing")
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        raise _refuse("malformed", f"{what} is not a time") from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _text(element: Any) -> str:
    return (element.text or "").strip() if element is not None else ""


def _check_signatures(client: Saml2Client, text: str, unverified: samlp.Response) -> tuple[samlp.Response, Any]:
    if unverified.signature is None and unverified.assertion[0].signature is None:
        raise _refuse("unsigned", "neither the SAML Response nor its Assertion is signed")
    try:
        response = client.sec.correctly_signed_response(text, origdoc=text, require_response_signature=False)
        assertion = response.assertion[0]
        if assertion.signature is not None:
            client.sec.check_signature(assertion, class_name(assertion), text)
    except Exception as exc:  # pysaml2's refusals come as many types; every one of them is a bad signature
        log.info("SAML signature refused: %s", type(exc).__name__)
        _drop_frames(exc)
        raise _refuse("bad_signature", "the signature does not verify with the configured IdP certificates") from None
    try:
        valid_instance(response)
    except Exception:  # pysaml2's NotValid and friends
        raise _refuse("malformed", "the SAML response breaks the SAML schema") from None
    return response, assertion


def _check_times(what: str, now: datetime, *, not_before: object = None, not_on_or_after: object = None) -> None:
    if not_before is not None and _instant(not_before, f"{what} NotBefore") > now + _SKEW:
        raise _refuse("not_yet_valid", f"the {what} is not valid yet")
    if not_on_or_after is not None and _instant(not_on_or_after, f"{what} NotOnOrAfter") <= now - _SKEW:
        raise _refuse("expired", f"the {what} has expired")


def _check_issued(what: str, instant: object, now: datetime) -> None:
    issued = _instant(instant, f"{what} IssueInstant")
    if issued > now + _SKEW:
        raise _refuse("not_yet_valid", f"the {what} was issued in the future")
    if issued < now - MAX_AGE - _SKEW:
        raise _refuse("expired", f"the {what} was issued too long ago")


def _check_conditions(assertion: Any, sp: SpEndpoints, now: datetime) -> None:
    conditions = assertion.conditions
    if conditions is None or not conditions.audience_restriction:
        raise _refuse("wrong_audience", "the assertion is not restricted to an audience")
    _check_times("assertion", now, not_before=conditions.not_before, not_on_or_after=conditions.not_on_or_after)
    for restriction in conditions.audience_restriction:
        if sp.entity_id not in {_text(a) for a in restriction.audience or ()}:
            raise _refuse("wrong_audience", f"the assertion is meant for another audience, not {sp.entity_id}")
    if conditions.condition:
        raise _refuse("malformed", "the assertion has a condition we do not understand")


def _bearer_expiry(assertion: Any, in_response_to: str, sp: SpEndpoints, now: datetime) -> datetime:
    """The NotOnOrAfter of the first bearer confirmation that holds; else the first one's failure."""
    failure: SamlResponseError | None = None
    for confirmation in assertion.subject.subject_confirmation:
        if confirmation.method != SCM_BEARER:
            continue
        data = confirmation.subject_confirmation_data
        try:
            if data is None or (data.recipient or "").strip() != sp.acs_url:
                raise _refuse("wrong_recipient", f"the assertion is meant for another recipient, not {sp.acs_url}")
            if (data.in_response_to or "") != in_response_to:
                raise _refuse("unknown_request", "the subject confirmation answers another request")
            if data.not_on_or_after is None:
                raise _refuse("malformed", "the subject confirmation has no NotOnOrAfter")
            _check_times("subject confirmation", now, not_before=data.not_before, not_on_or_after=data.not_on_or_after)
        except SamlResponseError as exc:
            failure = failure or exc
            continue
        return _instant(data.not_on_or_after, "NotOnOrAfter")
    raise failure or _refuse("no_subject", "the assertion has no bearer subject confirmation")


def _attributes(assertion: Any) -> dict[str, tuple[str, ...]]:
    out: dict[str, tuple[str, ...]] = {}
    for statement in assertion.attribute_statement or ():
        for attribute in statement.attribute or ():
            values = tuple(_text(v) for v in attribute.attribute_value or ())
            for key in (attribute.name, attribute.friendly_name):
                if key and key not in out:
                    out[key] = values
    return out


def verify_response(
    raw: bytes, *, config: SamlConfig, sp: SpEndpoints, client: Saml2Client, now: datetime | None = None
) -> VerifiedAssertion:
    """Verify a SAML Response for ``config``'s organization (steps 1-5 of the module docstring).

    Args:
        raw: the decoded ``SAMLResponse``.
        config: the organization's IdP.
        sp: our endpoints for that organization.
        client: a pysaml2 client trusting that IdP (``sp_client``).
        now: the time to judge validity by (the wall clock when None).

    Raises:
        SamlResponseError: refused; ``reason`` says by which rule.
    """
    now = now or datetime.now(UTC)
    _check_shape(_parse_strict(raw))
    try:
        text = raw.decode("utf-8")
        unverified = samlp.response_from_string(text)
    except Exception:  # pysaml2's parser raises assorted types for documents it cannot map
        raise _refuse("malformed", "the SAML response does not parse") from None
    if unverified is None or not unverified.assertion:
        raise _refuse("malformed", "the SAML response does not parse")
    response, assertion = _check_signatures(client, text, unverified)
    if response.version != "2.0" or assertion.version != "2.0":
        raise _refuse("malformed", "only SAML 2.0 is supported")
    if (response.issuer is not None and _text(response.issuer) != config.idp_entity_id) or _text(
        assertion.issuer
    ) != config.idp_entity_id:
        raise _refuse("wrong_issuer", f"the response was issued by another entity, not {config.idp_entity_id}")
    if response.destination is None and response.signature is not None:
        raise _refuse("wrong_destination", "a signed response must name its Destination")
    if response.destination is not None and response.destination.strip() != sp.acs_url:
        raise _refuse("wrong_destination", f"the response was sent to another destination, not {sp.acs_url}")
    in_response_to = (response.in_response_to or "").strip()
    if not in_response_to:
        raise _refuse("unsolicited", "the response answers no request: start the sign-in from this site")
    _check_issued("response", response.issue_instant, now)
    _check_issued("assertion", assertion.issue_instant, now)
    _check_conditions(assertion, sp, now)
    subject = assertion.subject
    if subject is None or subject.name_id is None or not _text(subject.name_id):
        raise _refuse("no_subject", "the assertion names no subject")
    expires = _bearer_expiry(assertion, in_response_to, sp, now)
    if len(assertion.authn_statement or ()) != 1:
        raise _refuse("malformed", "the assertion must hold exactly one AuthnStatement")
    statement = assertion.authn_statement[0]
    _check_times("session", now, not_on_or_after=statement.session_not_on_or_after)
    if assertion.conditions.not_on_or_after is not None:
        expires = max(expires, _instant(assertion.conditions.not_on_or_after, "NotOnOrAfter"))
    verified = VerifiedAssertion(
        assertion_id=str(assertion.id),
        in_response_to=in_response_to,
        issuer=config.idp_entity_id,
        name_id=_text(subject.name_id),
        name_id_format=subject.name_id.format,
        attributes=_attributes(assertion),
        not_on_or_after=expires,
        session_index=statement.session_index,
    )
    _second_opinion(client, raw, verified)
    return verified


def _second_opinion(client: Saml2Client, raw: bytes, verified: VerifiedAssertion) -> None:
    try:
        result = client.parse_authn_request_response(
            base64.b64encode(raw).decode("ascii"), BINDING_HTTP_POST, outstanding={verified.in_response_to: "/"}
        )
    except Exception as exc:  # pysaml2 refuses with assorted types
        log.info("pysaml2 refused a SAML response ours accepted: %s: %s", type(exc).__name__, str(exc)[:200])
        _drop_frames(exc)
        raise _refuse("rejected", "the SAML response breaks the Web SSO profile") from None
    if result is None or result.assertion is None or result.assertion.id != verified.assertion_id:
        raise _refuse("rejected", "the SAML response breaks the Web SSO profile")
