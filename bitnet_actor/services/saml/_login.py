"""SP-initiated SAML sign-in for organizations: :class:`SamlService`, what the HTTP API and the portal call.

``begin_login`` checks the return path (a local path only), makes an AuthnRequest, and keeps
``{request id -> return path, RelayState token, browser binding}`` in Redis for :data:`REQUEST_TTL_S` under
the organization. The browser goes to the IdP with the request and an opaque RelayState token (SAML allows
80 bytes of RelayState and wants it integrity-protected: the path itself never travels).

``complete_login`` takes the IdP's POST: it verifies the response (:mod:`._verify`), then, in Redis, refuses
an assertion seen before (``replayed``) and an InResponseTo that is no outstanding request of this
organization (``unknown_request``), checks the RelayState token and the browser binding (the login must end
in the browser that started it: no login CSRF), and spends both at once (one Lua script: the request is
deleted, the assertion's ID remembered until it expires). Then the email (NameID or the configured
attribute) must be in the allowed domains, and :mod:`._provision` finds or creates the user. Every refusal
after the configuration is known is audit-logged (``sso.saml.login_failed``, with its reason).

Starting the session is the caller's part (the HTTP layer's ``start_session``), as for password and OIDC
sign-in.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING, Final
from urllib.parse import urlsplit

import trio

from bitnet_actor.services import audit
from bitnet_actor.services.errors import NotFoundError, ValidationError
from bitnet_actor.services.saml import _config
from bitnet_actor.services.saml._errors import (
    SamlAccountError,
    SamlDisabledError,
    SamlError,
    SamlNotConfiguredError,
    SamlRequestError,
    SamlResponseError,
    SamlUnavailableError,
)
from bitnet_actor.services.saml._provision import provision
from bitnet_actor.services.saml._sp import (
    CLOCK_SKEW_S,
    SpEndpoints,
    authn_request,
    sp_client,
    sp_metadata,
    xmlsec_binary,
)
from bitnet_actor.services.saml._verify import MAX_AGE, VerifiedAssertion, decode_response, verify_response
from bitnet_actor.services.tenancy import normalize_email, org_id_by_name

if TYPE_CHECKING:
    from uuid import UUID

    from bitnet_actor.services.saml._config import SamlConfig, SamlConfigUpdate
    from bitnet_actor.stores.postgres import Database
    from bitnet_actor.stores.redis import RedisStore

__all__ = ["REQUEST_TTL_S", "SamlLogin", "SamlService", "safe_return_to"]

log = logging.getLogger(__name__)

REQUEST_TTL_S: Final = int(MAX_AGE.total_seconds())
"""How long a sign-in may take at the IdP (MFA included) before its request is forgotten."""
_MAX_RETURN_TO: Final = 2048
# Read a request record unless the assertion was seen before.
_PEEK: Final = (
    "if redis.call('EXISTS', KEYS[2]) == 1 then return {'replayed'} end "
    "local record = redis.call('GET', KEYS[1]) "
    "if not record then return {'unknown_request'} end "
    "return {'ok', record}"
)
# Spend a request and an assertion together: a second use of either is refused, whatever replicas race.
_SPEND: Final = (
    "if redis.call('EXISTS', KEYS[2]) == 1 then return 'replayed' end "
    "if redis.call('DEL', KEYS[1]) == 0 then return 'unknown_request' end "
    "redis.call('SET', KEYS[2], '1', 'PX', ARGV[1]) "
    "return 'ok'"
)
_MESSAGES: Final = {
    "replayed": "this SAML assertion was used before",
    "unknown_request": "the response answers no sign-in started here (expired, used, or another organization's)",
}


@dataclass(frozen=True, slots=True)
class SamlLogin:
    """A finished SAML sign-in: who, where to go next, and what was provisioned."""

    user_id: UUID
    email: str
    return_to: str
    created_user: bool
    joined: bool


def safe_return_to(value: str) -> bool:
    """A local path only: no scheme, no host, no ``//`` or ``/\\`` that browsers read as another host; printable
    ASCII (anything else percent-encoded), as a Location header carries it."""
    if not value.startswith("/") or value.startswith(("//", "/\\")) or len(value) > _MAX_RETURN_TO:
        return False
    if any(not 0x21 <= ord(c) <= 0x7E or c == "\\" for c in value):
        return False
    parts = urlsplit(value)
    return not parts.scheme and not parts.netloc


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


class SamlService:
    """SAML single sign-on for every organization of one deployment.

    Args:
        db: configurations, users, memberships, the audit log.
        redis: outstanding requests and spent assertions (shared by replicas).
        base_url: the server's public URL (its SP endpoints hang under it).
        limiter: caps concurrent signature checks (each runs ``xmlsec1`` in a worker thread).
    """

    def __init__(
        self, db: Database, redis: RedisStore, *, base_url: str, limiter: trio.CapacityLimiter | None = None
    ) -> None:
        self._db = db
        self._redis = redis
        self._base_url = base_url
        self._limiter = limiter or trio.CapacityLimiter(4)  # 4: xmlsec1 runs are short; more only queue on CPUs

    @property
    def available(self) -> bool:
        """Whether sign-ins can be verified here (``xmlsec1`` is installed)."""
        return xmlsec_binary() is not None

    def endpoints(self, org_id: UUID) -> SpEndpoints:
        """Our SP's entity id, ACS, metadata and login URLs for ``org_id``."""
        return SpEndpoints.for_org(self._base_url, org_id)

    async def metadata(self, org_id: UUID) -> str:
        """Our SP metadata for ``org_id`` (it depends on nothing but the id: IdP admins fetch it before the
        organization's configuration exists)."""
        return await trio.to_thread.run_sync(sp_metadata, self.endpoints(org_id), limiter=self._limiter)

    # -- configuration ----------------------------------------------------------------------------------

    async def get_config(self, org_id: UUID) -> SamlConfig | None:
        """The organization's configuration, or None."""
        return await _config.get_config(self._db, org_id)

    async def put_config(self, org_id: UUID, update: SamlConfigUpdate, *, actor: audit.Actor) -> SamlConfig:
        """Create or replace the organization's configuration (audited)."""
        return await _config.put_config(self._db, org_id, update, actor=actor)

    async def delete_config(self, org_id: UUID, *, actor: audit.Actor) -> bool:
        """Remove the organization's configuration (audited); False if it had none."""
        return await _config.delete_config(self._db, org_id, actor=actor)

    async def _usable_config(self, org_id: UUID) -> SamlConfig:
        config = await self.get_config(org_id)
        if config is None:
            raise SamlNotConfiguredError()
        if not config.enabled:
            raise SamlDisabledError()
        if not self.available:
            raise SamlUnavailableError()
        return config

    async def org_for_sign_in(self, name: str) -> UUID:
        """The organization called ``name`` (as its members know it; case does not matter), if they may sign
        in with SAML now: what a sign-in page asks before ``begin_login``.

        Raises:
            SamlNotConfiguredError: no organization of that name, none configured, or switched off: one answer
                for all three, so a name tells nobody more than that it has single sign-on.
            SamlUnavailableError: this server cannot verify sign-ins.
        """
        nobody = SamlNotConfiguredError("there is no single sign-on for an organization of that name")
        if not name.strip() or len(name) > 200:
            raise nobody
        try:
            org_id = await org_id_by_name(self._db, name.strip())
        except NotFoundError:
            raise nobody from None
        config = await self.get_config(org_id)
        if config is None or not config.enabled:
            raise nobody
        if not self.available:
            raise SamlUnavailableError()
        return org_id

    # -- the sign-in ------------------------------------------------------------------------------------

    @staticmethod
    def _request_key(org_id: UUID, request_id: str) -> str:
        # The braces make a Redis Cluster hash tag: an organization's keys share a slot, as the scripts need.
        return f"bitnet:saml:{{{org_id}}}:request:{request_id}"

    @staticmethod
    def _seen_key(org_id: UUID, assertion_id: str) -> str:
        return f"bitnet:saml:{{{org_id}}}:seen:{_digest(assertion_id)}"

    async def begin_login(self, org_id: UUID, *, return_to: str, binding: str) -> str:
        """Start a sign-in at the organization's IdP; return the URL to send the browser to.

        Args:
            org_id: the organization.
            return_to: a local path to go to after the sign-in.
            binding: a random value the caller also puts in a cookie of this browser and passes to
                ``complete_login`` from it (stored as SHA-256 only).

        Raises:
            SamlRequestError: ``invalid_return_to``.
            SamlNotConfiguredError, SamlDisabledError, SamlUnavailableError: no sign-in possible.
        """
        if not safe_return_to(return_to):
            raise SamlRequestError("invalid_return_to", "return_to must be a local path such as /portal")
        config = await self._usable_config(org_id)
        relay_state = secrets.token_urlsafe(24)
        request_id, url = await trio.to_thread.run_sync(
            partial(authn_request, self.endpoints(org_id), config, relay_state=relay_state), limiter=self._limiter
        )
        record = {"return_to": return_to, "relay_state": relay_state, "binding": _digest(binding)}
        await self._redis.set(self._request_key(org_id, request_id), json.dumps(record), ex=REQUEST_TTL_S)
        return url

    async def complete_login(
        self, org_id: UUID, *, saml_response: str, relay_state: str, binding: str | None, actor: audit.Actor
    ) -> SamlLogin:
        """Finish a sign-in from the IdP's POST to our ACS.

        Args:
            org_id: the organization of the ACS URL.
            saml_response: the ``SAMLResponse`` form field.
            relay_state: the ``RelayState`` form field.
            binding: the value given to ``begin_login``, from this browser's cookie.
            actor: where the request comes from (for the audit log).

        Returns:
            The signed-in user and the path to go to.

        Raises:
            SamlNotConfiguredError, SamlDisabledError, SamlUnavailableError: no sign-in possible.
            SamlRequestError: ``missing_response``, ``invalid_relay_state``.
            SamlResponseError: verification failed (``reason`` says which rule).
            SamlAccountError: ``email_domain``, ``account_exists``, ``account_disabled``.
        """
        config = await self.get_config(org_id)
        if config is None:
            raise SamlNotConfiguredError()
        try:
            if not config.enabled:
                raise SamlDisabledError()
            if not self.available:
                raise SamlUnavailableError()
            return await self._complete(config, saml_response, relay_state, binding, actor)
        except SamlError as exc:
            log.info("SAML sign-in refused for %s: %s (%s)", org_id, exc.reason, exc)
            async with self._db.transaction(org_id=org_id) as tx:
                await audit.record(
                    tx,
                    org_id=org_id,
                    actor=actor,
                    action="sso.saml.login_failed",
                    target_type="saml_config",
                    target_id=org_id,
                    details={"reason": exc.reason, "message": str(exc)[:300]},
                )
            raise

    async def _complete(
        self, config: SamlConfig, saml_response: str, relay_state: str, binding: str | None, actor: audit.Actor
    ) -> SamlLogin:
        if not saml_response:
            raise SamlRequestError("missing_response", "the IdP's POST has no SAMLResponse")
        raw = decode_response(saml_response)
        sp = self.endpoints(config.org_id)

        def verify() -> VerifiedAssertion:
            return verify_response(raw, config=config, sp=sp, client=sp_client(sp, config))

        verified = await trio.to_thread.run_sync(verify, limiter=self._limiter)
        if len(verified.in_response_to) > 200:  # ours are short; a long one is nobody's
            raise SamlResponseError("unknown_request", _MESSAGES["unknown_request"])
        keys = [
            self._request_key(config.org_id, verified.in_response_to),
            self._seen_key(config.org_id, verified.assertion_id),
        ]
        peeked = await self._redis.eval(_PEEK, keys, [])
        status = peeked[0].decode() if isinstance(peeked[0], bytes) else str(peeked[0])
        if status != "ok":
            raise SamlResponseError(status, _MESSAGES[status])
        record = json.loads(peeked[1])
        if not relay_state or not hmac.compare_digest(str(record["relay_state"]).encode(), relay_state.encode()):
            raise SamlRequestError("invalid_relay_state", "the RelayState does not belong to this sign-in")
        if binding is None or not hmac.compare_digest(str(record["binding"]), _digest(binding)):
            raise SamlResponseError("browser_mismatch", "the sign-in was started in another browser")
        now = datetime.now(UTC)
        # Remembered until it expires, but never past the point where its IssueInstant alone refuses it.
        skew = timedelta(seconds=CLOCK_SKEW_S)
        forget_at = min(verified.not_on_or_after + skew, now + MAX_AGE + 2 * skew)
        ttl_ms = max(1000, int((forget_at - now).total_seconds() * 1000))
        spent = await self._redis.eval(_SPEND, keys, [ttl_ms])
        spent = spent.decode() if isinstance(spent, bytes) else str(spent)
        if spent != "ok":
            raise SamlResponseError(spent, _MESSAGES[spent])
        email, name = self._identity(config, verified)
        done = await provision(self._db, config, verified, email=email, name=name, actor=actor)
        return SamlLogin(
            user_id=done.user_id,
            email=email,
            return_to=str(record["return_to"]),
            created_user=done.created_user,
            joined=done.joined,
        )

    @staticmethod
    def _identity(config: SamlConfig, verified: VerifiedAssertion) -> tuple[str, str]:
        raw = verified.attribute(config.email_attribute) if config.email_attribute else verified.name_id
        if not raw:
            where = f"attribute {config.email_attribute!r}" if config.email_attribute else "NameID"
            raise SamlResponseError("no_email", f"the assertion has no email in its {where}")
        try:
            email = normalize_email(raw)
        except ValidationError:
            raise SamlResponseError("no_email", "the assertion's email is not an email address") from None
        if not config.email_allowed(email):
            raise SamlAccountError("email_domain", "this email's domain may not sign in to this organization")
        name = (verified.attribute(config.name_attribute) if config.name_attribute else None) or ""
        return email, name
