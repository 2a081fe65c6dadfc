"""SAML single sign-on, service level: configuration rules, and every check a response must pass, against a
local IdP built with pysaml2 (tests/saml_idp.py) over real PostgreSQL and Redis.

Each negative case gets exactly one thing wrong and asserts the refusal's ``reason``, so a check that is
missing (or a different check refusing for another reason) fails the test.
"""

from __future__ import annotations

import re
import secrets
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING
from xml.etree import ElementTree as ET

import pytest
from saml2 import samlp

from bitnet_actor.services import audit, tenancy
from bitnet_actor.services.errors import ValidationError
from bitnet_actor.services.saml import (
    REQUEST_TTL_S,
    SamlAccountError,
    SamlConfigUpdate,
    SamlDisabledError,
    SamlError,
    SamlLogin,
    SamlNotConfiguredError,
    SamlRequestError,
    SamlResponseError,
    SamlService,
    SamlUnavailableError,
    safe_return_to,
)
from bitnet_actor.stores import app_dsn
from bitnet_actor.stores.postgres import open_database
from tests.saml_idp import (
    PERSISTENT,
    SHA1,
    SHA1_RSA,
    SeenRequest,
    TestIdp,
    decode,
    encode,
    make_certificate,
    require_xmlsec1,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable
    from pathlib import Path

    from bitnet_actor.stores.postgres import Database
    from bitnet_actor.stores.redis import RedisStore

BASE = "https://bitnet.example.test"
MIN = timedelta(minutes=1)
ACTOR = audit.Actor(ip="192.0.2.7", user_agent="test-browser")
MD = "{urn:oasis:names:tc:SAML:2.0:metadata}"


def unique_email(domain: str = "acme.example") -> str:
    return f"ann-{uuid.uuid4().hex[:10]}@{domain}"


async def new_org(db: Database) -> uuid.UUID:
    suffix = uuid.uuid4().hex[:10]
    org, _, _ = await tenancy.admin_create_org(db, name=f"saml-{suffix}", owner_email=f"owner-{suffix}@example.com")
    return org.id


@dataclass
class Sso:
    """One organization with SAML configured against its own IdP."""

    saml: SamlService
    org_id: uuid.UUID
    idp: TestIdp

    async def start(self, return_to: str = "/portal") -> tuple[SeenRequest, str]:
        binding = secrets.token_urlsafe(32)
        url = await self.saml.begin_login(self.org_id, return_to=return_to, binding=binding)
        return self.idp.read_request(url), binding

    async def finish(
        self, response: str, request: SeenRequest, binding: str, *, relay_state: str | None = None
    ) -> SamlLogin:
        return await self.saml.complete_login(
            self.org_id,
            saml_response=response,
            relay_state=request.relay_state if relay_state is None else relay_state,
            binding=binding,
            actor=ACTOR,
        )


async def configure(saml: SamlService, org_id: uuid.UUID, idp: TestIdp, **fields: object) -> None:
    update = SamlConfigUpdate.check(
        idp_entity_id=idp.entity_id, idp_sso_url=idp.sso_url, idp_certificates=[idp.cert_pem], **fields
    )
    await saml.put_config(org_id, update, actor=ACTOR)
    idp.trust(await saml.metadata(org_id))


@pytest.fixture
async def db(db: Database, pg_dsn: str) -> AsyncIterator[Database]:
    """The service role's pool (row-level security applies, as in production), the schema migrated."""
    async with open_database(app_dsn(pg_dsn, "bitnet_app"), max_size=4) as app:
        assert await app.fetchval("SELECT current_user") == "bitnet_app"
        yield app


@pytest.fixture
def xmlsec() -> str:
    return require_xmlsec1()


@pytest.fixture
def saml(db: Database, redis: RedisStore) -> SamlService:
    return SamlService(db, redis, base_url=BASE)


@pytest.fixture
async def sso(saml: SamlService, db: Database, tmp_path: Path, xmlsec: str) -> Sso:
    org_id = await new_org(db)
    idp = TestIdp(tmp_path)
    await configure(saml, org_id, idp, email_attribute="mail", name_attribute="displayName")
    return Sso(saml, org_id, idp)


async def refused(call: object) -> SamlError:
    with pytest.raises(SamlError) as caught:
        await call  # type: ignore[misc]
    return caught.value


# ---------------------------------------------------------------------------------------- configuration


def cert_of(common_name: str = "idp", **kw: int) -> str:
    return make_certificate(common_name, **kw)[1]


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"idp_certificates": []}, "idp_certificates"),
        ({"idp_certificates": ["not a certificate"]}, "idp_certificates"),
        ({"idp_certificates": ["-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"]}, "idp_certificates"),
        ({"idp_certificates": ["two in one"]}, "idp_certificates"),
        ({"idp_certificates": ["weak"]}, "idp_certificates"),
        ({"idp_certificates": ["same", "same"]}, "idp_certificates"),
        ({"idp_sso_url": "http://idp.example.test/sso"}, "idp_sso_url"),
        ({"idp_sso_url": "https://idp.example.test/sso#x"}, "idp_sso_url"),
        ({"idp_sso_url": "ftp://idp.example.test/sso"}, "idp_sso_url"),
        ({"idp_entity_id": "idp with spaces"}, "idp_entity_id"),
        ({"idp_entity_id": "no-scheme"}, "idp_entity_id"),
        ({"allowed_email_domains": ["acme.example", "not a domain"]}, "allowed_email_domains"),
        ({"allowed_email_domains": ["localhost"]}, "allowed_email_domains"),
        ({"default_role": "owner"}, "default_role"),
        ({"email_attribute": " mail"}, "email_attribute"),
        ({"enabled": "yes"}, "enabled"),
    ],
)
def test_configuration_is_checked(fields: dict[str, object], field: str) -> None:
    good = cert_of()
    replacements = {
        "two in one": good + cert_of("other"),
        "weak": cert_of("weak", key_size=1024),
        "same": good,
    }
    certs = fields.get("idp_certificates")
    if isinstance(certs, list):
        fields = {"idp_certificates": [replacements.get(c, c) for c in certs]}
    base: dict[str, object] = {
        "idp_entity_id": "https://idp.example.test/metadata",
        "idp_sso_url": "https://idp.example.test/sso",
        "idp_certificates": [good],
    }
    with pytest.raises(ValidationError) as caught:
        SamlConfigUpdate.check(**{**base, **fields})
    assert caught.value.field == field


def test_configuration_is_normalized() -> None:
    cert = cert_of()
    update = SamlConfigUpdate.check(
        idp_entity_id="urn:idp:acme",
        idp_sso_url="http://127.0.0.1:9/sso?tenant=1",  # http only on loopback
        idp_certificates=["\n  " + cert + "\n"],
        allowed_email_domains=["Acme.Example.", "acme.example", "eu.acme.example"],
    )
    assert update.idp_certificates == (cert,)
    assert update.allowed_email_domains == ("acme.example", "eu.acme.example")
    assert update.default_role == "member" and update.enabled and update.email_attribute is None


async def test_configuration_store_and_audit(saml: SamlService, db: Database) -> None:
    org_id = await new_org(db)
    assert await saml.get_config(org_id) is None
    cert = cert_of()
    first = SamlConfigUpdate.check(
        idp_entity_id="https://idp.example.test/metadata", idp_sso_url="https://idp.example.test/sso",
        idp_certificates=[cert], allowed_email_domains=["acme.example"], default_role="viewer",
    )  # fmt: skip
    stored = await saml.put_config(org_id, first, actor=ACTOR)
    assert stored.default_role == "viewer" and stored.allowed_email_domains == ("acme.example",)
    [info] = stored.certificates()
    assert not info.expired and info.subject == "CN=idp" and len(info.sha256_fingerprint) == 95
    assert stored.email_allowed("x@acme.example") and not stored.email_allowed("x@evil.example")
    second = SamlConfigUpdate.check(
        idp_entity_id="https://idp.example.test/metadata", idp_sso_url="https://idp.example.test/sso2",
        idp_certificates=[cert, cert_of("next")], enabled=False,
    )  # fmt: skip
    replaced = await saml.put_config(org_id, second, actor=ACTOR)
    assert replaced.idp_sso_url.endswith("/sso2") and not replaced.enabled and len(replaced.certificates()) == 2
    assert replaced.created_at == stored.created_at and replaced.updated_at >= stored.updated_at
    assert await saml.get_config(await new_org(db)) is None  # another organization sees none of it
    assert await saml.delete_config(org_id, actor=ACTOR)
    assert not await saml.delete_config(org_id, actor=ACTOR)
    entries = await audit.list_entries(db, org_id)
    actions = [e.action for e in entries if e.action.startswith("sso.")]
    assert actions == ["sso.saml.deleted", "sso.saml.updated", "sso.saml.created"]
    created = next(e for e in entries if e.action == "sso.saml.created")
    assert created.details["idp_certificates"] == [info.sha256_fingerprint]  # fingerprints, not certificates
    assert created.ip == ACTOR.ip


def test_return_paths_are_local_only() -> None:
    for good in ("/", "/portal", "/portal/keys?tab=2#top", "/a//b"):
        assert safe_return_to(good), good
    for bad in ("", "portal", "//evil.example", "/\\evil.example", "https://evil.example/", "/x\\y",
                "javascript:alert(1)", "/\x00", "/ok\n", "/a b", "/caf\u00e9", "/" + "a" * 3000):  # fmt: skip
        assert not safe_return_to(bad), bad


# ---------------------------------------------------------------------------------------- metadata, request


async def test_sp_metadata_says_what_we_expect(saml: SamlService) -> None:
    org_id = uuid.uuid4()
    sp = saml.endpoints(org_id)
    root = ET.fromstring((await saml.metadata(org_id)).split("?>", 1)[1])
    assert root.get("entityID") == sp.entity_id == f"{BASE}/api/v1/saml/{org_id}/metadata"
    descriptor = root.find(f"{MD}SPSSODescriptor")
    assert descriptor is not None
    assert descriptor.get("AuthnRequestsSigned") == "false" and descriptor.get("WantAssertionsSigned") == "true"
    [acs] = descriptor.findall(f"{MD}AssertionConsumerService")
    assert acs.get("Location") == sp.acs_url and acs.get("Binding").endswith(":HTTP-POST")  # type: ignore[union-attr]
    assert descriptor.find(f"{MD}KeyDescriptor") is None  # the SP holds no key


async def test_authn_request_and_its_record(sso: Sso, redis: RedisStore) -> None:
    request, _ = await sso.start("/portal/keys")
    sp = sso.saml.endpoints(sso.org_id)
    assert request.sp_entity_id == sp.entity_id and request.acs_url == sp.acs_url
    assert request.destination == sso.idp.sso_url
    assert "/portal" not in request.relay_state and len(request.relay_state) <= 80  # opaque, within SAML's 80 bytes
    key = f"bitnet:saml:{{{sso.org_id}}}:request:{request.id}"
    ttl = await redis.run(lambda r: r.ttl(key))
    assert 0 < ttl <= REQUEST_TTL_S


async def test_login_needs_a_local_return_path(sso: Sso) -> None:
    for target in ("https://evil.example/", "//evil.example/x"):
        error = await refused(sso.saml.begin_login(sso.org_id, return_to=target, binding="b" * 32))
        assert isinstance(error, SamlRequestError) and error.reason == "invalid_return_to"


async def test_login_without_configuration_or_switched_off(sso: Sso, saml: SamlService, db: Database) -> None:
    error = await refused(saml.begin_login(await new_org(db), return_to="/", binding="b" * 32))
    assert isinstance(error, SamlNotConfiguredError)
    request, binding = await sso.start()
    response = sso.idp.craft(request, email=unique_email())
    await configure(saml, sso.org_id, sso.idp, enabled=False)
    error = await refused(sso.saml.begin_login(sso.org_id, return_to="/", binding="b" * 32))
    assert isinstance(error, SamlDisabledError)
    error = await refused(sso.finish(response, request, binding))  # a sign-in under way is refused too
    assert isinstance(error, SamlDisabledError)


async def test_without_xmlsec1_sign_in_is_unavailable(sso: Sso, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    assert not sso.saml.available
    error = await refused(sso.saml.begin_login(sso.org_id, return_to="/", binding="b" * 32))
    assert isinstance(error, SamlUnavailableError)
    assert "EntityDescriptor" in await sso.saml.metadata(sso.org_id)  # metadata needs no xmlsec1


async def test_the_organization_to_sign_in_to_is_found_by_its_name(
    saml: SamlService, db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No xmlsec1 needed (it is looked for last)."""
    org_id = await new_org(db)
    name = (await tenancy.get_org(db, org_id)).name
    answers = []
    for asked in (name, "", " ", "x" * 201, f"nobody-{uuid.uuid4().hex}"):
        error = await refused(saml.org_for_sign_in(asked))
        assert isinstance(error, SamlNotConfiguredError), asked
        answers.append(str(error))
    idp = TestIdp(tmp_path)
    await configure(saml, org_id, idp, enabled=False)
    error = await refused(saml.org_for_sign_in(name))
    assert isinstance(error, SamlNotConfiguredError)  # switched off: the same answer as no organization at all
    assert {*answers, str(error)} == {"there is no single sign-on for an organization of that name"}
    await configure(saml, org_id, idp)
    monkeypatch.setenv("PATH", "/nonexistent")
    assert isinstance(await refused(saml.org_for_sign_in(name)), SamlUnavailableError)
    monkeypatch.undo()
    if saml.available:
        assert await saml.org_for_sign_in(f"  {name.upper()} ") == org_id


# ---------------------------------------------------------------------------------------- sign-in


async def test_round_trip_with_pysaml2_idp(sso: Sso, db: Database) -> None:
    """pysaml2's own IdP answers our request; the user is provisioned just in time with the default role."""
    request, binding = await sso.start("/portal/keys")
    email = unique_email()
    done = await sso.finish(sso.idp.respond(request, email=email, name="Ann Example"), request, binding)
    assert done.return_to == "/portal/keys" and done.email == email and done.created_user and done.joined
    user = await tenancy.get_user(db, done.user_id)
    assert user.email == email and user.name == "Ann Example" and not user.email_verified
    assert await tenancy.membership_role(db, sso.org_id, done.user_id) == "member"
    entries = await audit.list_entries(db, sso.org_id)
    assert [e.action for e in entries[:2]] == ["sso.saml.login", "member.provisioned"]
    assert entries[0].actor_user_id == done.user_id and entries[0].ip == ACTOR.ip
    again_request, again_binding = await sso.start()
    again = await sso.finish(sso.idp.respond(again_request, email=email), again_request, again_binding)
    assert again.user_id == done.user_id and not again.created_user and not again.joined


@pytest.mark.parametrize("sign", ["assertion", "response", "both"])
async def test_response_or_assertion_signature_suffices(sso: Sso, sign: str) -> None:
    request, binding = await sso.start()
    done = await sso.finish(sso.idp.craft(request, email=unique_email(), sign=sign), request, binding)
    assert done.created_user


def _assertion_element(xml: str) -> str:
    match = re.search(r"<(\w+):Assertion\b.*?</\1:Assertion>", xml, re.DOTALL)
    assert match, xml
    return match.group(0)


def _unsigned(assertion_xml: str) -> str:
    return re.sub(r"<(\w+):Signature\b.*?</\1:Signature>", "", assertion_xml, flags=re.DOTALL)


def wrapped_twice(idp: TestIdp, request: SeenRequest, email: str) -> str:
    """XSW: an unsigned evil assertion beside the signed original."""
    xml = decode(idp.craft(request, email=email))
    original = _assertion_element(xml)
    evil = _unsigned(original).replace(email, "mallory@acme.example").replace('ID="id-', 'ID="evil-')
    return encode(xml.replace(original, evil + original))


def wrapped_after(idp: TestIdp, request: SeenRequest, email: str) -> str:
    """A second, unsigned assertion after the signed original (whichever a parser picks, one is unsigned)."""
    xml = decode(idp.craft(request, email=email))
    original = _assertion_element(xml)
    evil = _unsigned(original).replace(email, "mallory@acme.example").replace('ID="id-', 'ID="evil-')
    return encode(xml.replace(original, original + evil))


def id_twice(idp: TestIdp, request: SeenRequest, email: str) -> str:
    """The Response takes the signed Assertion's ID: which element an ID names becomes ambiguous."""
    xml = decode(idp.craft(request, email=email))
    assertion_id = re.search(r'<\w+:Assertion [^>]*ID="([^"]+)"', xml)
    response_id = re.search(r'<\w+:Response [^>]*ID="([^"]+)"', xml)
    assert assertion_id and response_id
    return encode(xml.replace(f'ID="{response_id.group(1)}"', f'ID="{assertion_id.group(1)}"', 1))


def wrapped_same_id(idp: TestIdp, request: SeenRequest, email: str) -> str:
    """XSW: the evil assertion takes the original's ID and place; the signed original hides in Extensions."""
    xml = decode(idp.craft(request, email=email))
    original = _assertion_element(xml)
    evil = _unsigned(original).replace(email, "mallory@acme.example")
    prefix = re.match(r"<(\w+):Response", xml.split("?>")[-1].strip())
    assert prefix
    hidden = f"<{prefix.group(1)}:Extensions>{original}</{prefix.group(1)}:Extensions>"
    return encode(
        xml.replace(original, evil).replace(f"</{prefix.group(1)}:Status>", f"</{prefix.group(1)}:Status>" + hidden)
    )


def tampered(idp: TestIdp, request: SeenRequest, email: str) -> str:
    return encode(decode(idp.craft(request, email=email)).replace(email, "mallory@acme.example"))


def tampered_response(idp: TestIdp, request: SeenRequest, email: str) -> str:
    return encode(decode(idp.craft(request, email=email, sign="response")).replace(email, "mallory@acme.example"))


def comment_truncation(idp: TestIdp, request: SeenRequest, email: str) -> str:
    """The IdP signed alice@acme.example.evil.test; a comment makes naive parsers read alice@acme.example."""
    signed = email + ".evil.test"
    xml = decode(idp.craft(request, email=signed))
    return encode(xml.replace(signed, email + "<!---->.evil.test"))


def with_dtd(idp: TestIdp, request: SeenRequest, email: str) -> str:
    xml = decode(idp.craft(request, email=email))
    body = xml.split("?>", 1)[-1] if xml.startswith("<?xml") else xml
    return encode('<?xml version="1.0"?><!DOCTYPE r [<!ENTITY e "x">]>' + body)


def encrypted(idp: TestIdp, request: SeenRequest, email: str) -> str:
    xml = decode(idp.craft(request, email=email, sign="none"))
    original = _assertion_element(xml)
    prefix = original[1 : original.index(":")]
    return encode(xml.replace(original, f"<{prefix}:EncryptedAssertion/>"))


def idp_error(idp: TestIdp, request: SeenRequest, email: str) -> str:
    xml = decode(idp.craft(request, email=email, sign="none", status=samlp.STATUS_RESPONDER))
    return encode(xml.replace(_assertion_element(xml), ""))


def mallory(idp: TestIdp, request: SeenRequest, email: str) -> str:
    """Signed by another key, claiming to be the configured IdP."""
    impostor = TestIdp(idp.directory, entity_id=idp.entity_id, sso_url=idp.sso_url, name="mallory")
    return impostor.craft(request, email=email)


def craft(**kwargs: object) -> Callable[[TestIdp, SeenRequest, str], str]:
    return lambda idp, request, email: idp.craft(request, email=email, **kwargs)  # type: ignore[arg-type]


NEGATIVE: list[tuple[str, Callable[[TestIdp, SeenRequest, str], str], str]] = [
    ("unsigned", craft(sign="none"), "unsigned"),
    ("signed by another key", mallory, "bad_signature"),
    ("tampered after signing", tampered, "bad_signature"),
    ("tampered signed response", tampered_response, "bad_signature"),
    ("wrapped beside the original", wrapped_twice, "signature_wrapping"),
    ("wrapped with the original's ID", wrapped_same_id, "signature_wrapping"),
    ("second assertion after the original", wrapped_after, "signature_wrapping"),
    ("an ID twice", id_twice, "signature_wrapping"),
    ("comment inside a signed value", comment_truncation, "malformed"),
    ("DTD", with_dtd, "malformed"),
    ("encrypted assertion", encrypted, "encrypted_assertion"),
    ("IdP error status", idp_error, "idp_status"),
    ("SHA-1", craft(sign_alg=SHA1_RSA, digest_alg=SHA1), "weak_algorithm"),
    ("wrong audience", craft(audience="https://bitnet.example.test/api/v1/saml/other/metadata"), "wrong_audience"),
    ("wrong recipient", craft(recipient="https://evil.example/acs"), "wrong_recipient"),
    ("wrong destination", craft(destination="https://evil.example/acs"), "wrong_destination"),
    ("signed response without destination", craft(destination=None, sign="response"), "wrong_destination"),
    ("assertion of another issuer", craft(sign="response", assertion_issuer="https://evil.test/idp"), "wrong_issuer"),
    ("expired", craft(valid_from=-MIN * 9, valid_for=-MIN * 3, issued=-MIN * 8), "expired"),
    ("confirmation expired", craft(confirmation_valid_for=timedelta(minutes=-3)), "expired"),
    ("not yet valid", craft(valid_from=timedelta(minutes=5)), "not_yet_valid"),
    ("issued in the future", craft(issued=timedelta(minutes=5)), "not_yet_valid"),
    ("issued long ago", craft(issued=timedelta(minutes=-30)), "expired"),
    ("unsolicited", craft(in_response_to=None), "unsolicited"),
    ("unknown InResponseTo", craft(in_response_to="id-never-asked-for"), "unknown_request"),
]  # fmt: skip


@pytest.mark.parametrize(("make", "reason"), [(m, r) for _, m, r in NEGATIVE], ids=[n for n, _, _ in NEGATIVE])
async def test_negative(sso: Sso, db: Database, make: Callable[[TestIdp, SeenRequest, str], str], reason: str) -> None:
    request, binding = await sso.start()
    email = unique_email()
    error = await refused(sso.finish(make(sso.idp, request, email), request, binding))
    assert isinstance(error, SamlResponseError), error
    assert error.reason == reason, (error.reason, str(error))
    assert await db.fetchval("SELECT count(*) FROM users WHERE email LIKE $1", email.split("@")[0] + "%") == 0
    [entry] = [e for e in await audit.list_entries(db, sso.org_id, limit=5) if e.action.startswith("sso.saml.login")][
        :1
    ]
    assert entry.action == "sso.saml.login_failed" and entry.details["reason"] == reason
    # The request was not spent: the genuine response still signs in.
    assert (await sso.finish(sso.idp.craft(request, email=email), request, binding)).email == email


async def test_replayed_assertion_is_refused(sso: Sso) -> None:
    request, binding = await sso.start()
    response = sso.idp.craft(request, email=unique_email())
    await sso.finish(response, request, binding)
    error = await refused(sso.finish(response, request, binding))
    assert isinstance(error, SamlResponseError) and error.reason == "replayed"


async def test_request_is_spent_by_one_assertion(sso: Sso) -> None:
    request, binding = await sso.start()
    email = unique_email()
    await sso.finish(sso.idp.craft(request, email=email), request, binding)
    error = await refused(sso.finish(sso.idp.craft(request, email=email), request, binding))  # a fresh assertion
    assert isinstance(error, SamlResponseError) and error.reason == "unknown_request"


async def test_login_ends_in_the_browser_that_started_it(sso: Sso) -> None:
    request, binding = await sso.start()
    response = sso.idp.craft(request, email=unique_email())
    for other in (None, secrets.token_urlsafe(32)):
        error = await refused(sso.finish(response, request, other))  # type: ignore[arg-type]
        assert isinstance(error, SamlResponseError) and error.reason == "browser_mismatch"
    assert (await sso.finish(response, request, binding)).created_user


@pytest.mark.parametrize("relay_state", ["", "https://evil.example/", "/portal", "caf\u00e9"])
async def test_relay_state_must_be_the_requests(sso: Sso, relay_state: str) -> None:
    request, binding = await sso.start("/portal")
    error = await refused(
        sso.finish(sso.idp.craft(request, email=unique_email()), request, binding, relay_state=relay_state)
    )
    assert isinstance(error, SamlRequestError) and error.reason == "invalid_relay_state"


async def test_another_organizations_request_and_configuration(
    sso: Sso, saml: SamlService, db: Database, tmp_path: Path
) -> None:
    """Org B trusts another IdP; org C trusts the same IdP as org A. A's responses work at neither."""
    other_idp = TestIdp(tmp_path, entity_id="https://idp.other.test/metadata", name="other")
    b = Sso(saml, await new_org(db), other_idp)
    await configure(saml, b.org_id, other_idp)
    c = Sso(saml, await new_org(db), sso.idp)
    await configure(saml, c.org_id, sso.idp)
    request, binding = await sso.start()
    response = sso.idp.craft(request, email=unique_email())
    error = await refused(b.finish(response, request, binding))  # signed by a key B does not trust
    assert isinstance(error, SamlResponseError) and error.reason == "bad_signature"
    error = await refused(c.finish(response, request, binding))  # trusted key, but meant for A
    assert isinstance(error, SamlResponseError) and error.reason == "wrong_destination"
    c_request, _ = await c.start()
    forged = sso.idp.craft(request, email=unique_email(), in_response_to=c_request.id)  # A's SP, C's request id
    error = await refused(sso.finish(forged, request, binding))
    assert isinstance(error, SamlResponseError) and error.reason == "unknown_request"
    assert (await sso.finish(response, request, binding)).created_user  # A itself accepts it


async def test_email_outside_allowed_domains(sso: Sso, db: Database) -> None:
    await configure(sso.saml, sso.org_id, sso.idp, email_attribute="mail", allowed_email_domains=["acme.example"])
    request, binding = await sso.start()
    email = unique_email("evil.example")
    error = await refused(sso.finish(sso.idp.craft(request, email=email), request, binding))
    assert isinstance(error, SamlAccountError) and error.reason == "email_domain"
    assert await db.fetchval("SELECT count(*) FROM users WHERE email = $1", email) == 0
    request, binding = await sso.start()
    assert (await sso.finish(sso.idp.craft(request, email=unique_email("acme.example")), request, binding)).joined


async def test_email_comes_from_the_configured_place(sso: Sso) -> None:
    request, binding = await sso.start()
    error = await refused(
        sso.finish(sso.idp.craft(request, email=unique_email(), attributes={"email": "x"}), request, binding)
    )
    assert isinstance(error, SamlResponseError) and error.reason == "no_email"  # no "mail" attribute
    await configure(sso.saml, sso.org_id, sso.idp)  # email_attribute unset: the NameID
    request, binding = await sso.start()
    email = unique_email()
    done = await sso.finish(
        sso.idp.craft(request, email=email, attributes={"mail": "other@acme.example"}), request, binding
    )
    assert done.email == email
    request, binding = await sso.start()
    error = await refused(sso.finish(sso.idp.craft(request, email="not-an-email", attributes={}), request, binding))
    assert isinstance(error, SamlResponseError) and error.reason == "no_email"


async def test_existing_account_elsewhere_is_not_taken_over(sso: Sso, db: Database) -> None:
    """A user of another organization: the IdP of this one cannot sign in as them, until they are a member."""
    email = unique_email()
    other_org, user_id, _ = await tenancy.admin_create_org(db, name=f"home-{uuid.uuid4().hex[:8]}", owner_email=email)
    request, binding = await sso.start()
    error = await refused(sso.finish(sso.idp.craft(request, email=email), request, binding))
    assert isinstance(error, SamlAccountError) and error.reason == "account_exists"
    assert await tenancy.membership_role(db, sso.org_id, user_id) is None
    async with db.transaction(org_id=sso.org_id) as tx:  # as an accepted invitation leaves it
        await tx.execute(
            "INSERT INTO memberships (org_id, user_id, role) VALUES ($1, $2, 'admin')", sso.org_id, user_id
        )
    request, binding = await sso.start()
    done = await sso.finish(sso.idp.craft(request, email=email), request, binding)
    assert done.user_id == user_id and not done.created_user and not done.joined
    assert await tenancy.membership_role(db, sso.org_id, user_id) == "admin"  # an existing role is kept
    assert await tenancy.membership_role(db, other_org.id, user_id) == "owner"


async def test_persistent_name_id_keeps_its_account_when_the_email_changes(sso: Sso) -> None:
    subject = uuid.uuid4().hex
    request, binding = await sso.start()
    first = await sso.finish(
        sso.idp.craft(request, email=unique_email(), name_id=subject, name_id_format=PERSISTENT), request, binding
    )
    request, binding = await sso.start()
    renamed = unique_email()
    second = await sso.finish(
        sso.idp.craft(request, email=renamed, name_id=subject, name_id_format=PERSISTENT), request, binding
    )
    assert second.user_id == first.user_id and second.email == renamed


async def test_disabled_account_is_refused(sso: Sso, db: Database) -> None:
    request, binding = await sso.start()
    email = unique_email()
    done = await sso.finish(sso.idp.craft(request, email=email), request, binding)
    await db.execute("UPDATE users SET disabled_at = now() WHERE id = $1", done.user_id)
    request, binding = await sso.start()
    error = await refused(sso.finish(sso.idp.craft(request, email=email), request, binding))
    assert isinstance(error, SamlAccountError) and error.reason == "account_disabled"


async def test_garbage_is_malformed(sso: Sso) -> None:
    request, binding = await sso.start()
    for garbage in ("%%%not base64%%%", encode("<not-xml"), encode("<r/>"), encode(b"\xff\xfe<x/>"), ""):
        error = await refused(sso.finish(garbage, request, binding))
        assert error.reason in ("malformed", "missing_response"), (garbage, error.reason)
