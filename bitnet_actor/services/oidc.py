"""OpenID Connect login: authorization code flow with PKCE (S256), state and nonce, for any provider.

``OidcClient.begin_login`` makes a fresh ``state``, ``nonce`` and PKCE verifier, keeps them in Redis for
10 minutes under the state, and returns the provider's authorization URL. The provider sends the browser back
to ``redirect_uri`` with ``code`` and ``state``; ``complete_login`` takes the state record out of Redis (so
a state works once), exchanges the code (with the verifier and the client secret, by ``client_secret_basic``
or ``client_secret_post`` as the provider's discovery document says), and verifies the ID token: signature
by a key of the provider's JWKS (asymmetric algorithms only; a token without ``kid`` is tried against each
matching key), ``iss``, ``aud`` (and ``azp``), ``exp``, ``iat``, ``nonce``, and ``at_hash`` when present.

``link_identity`` maps the identity to a user: by (issuer, subject) if linked before; else to the user with
the same email only when the provider says the email is verified; else a new user. An unverified email that
matches an account is refused: an identity provider must never be a way into someone else's account.

HTTP goes through ``httpx.AsyncClient`` (it runs under trio). Discovery and the JWKS are cached for an hour;
an unknown ``kid`` refetches the JWKS, at most once a minute.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import httpx
import jwt
import trio

from bitnet_actor.errors import BitnetError, ConfigError, ConflictError

if TYPE_CHECKING:
    import uuid

    from bitnet_actor.stores.postgres import Database
    from bitnet_actor.stores.redis import RedisStore

__all__ = [
    "STATE_KEY_PREFIX",
    "OidcClient",
    "OidcError",
    "OidcIdentity",
    "OidcSettings",
    "OidcStateError",
    "link_identity",
]

STATE_KEY_PREFIX: Final = "bitnet:oidc:state:"
STATE_TTL_S: Final = 600
_DISCOVERY_TTL_S = 3600.0
_JWKS_TTL_S = 3600.0
_JWKS_REFETCH_MIN_S = 60.0
_LEEWAY_S = 60
_HTTP_TIMEOUT_S = 10.0
_MAX_RESPONSE_BYTES = 1 << 20
# Asymmetric algorithms only: never "none", never HMAC (whose key would be the client secret).
_ALGORITHMS: Final = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512")
_KTY = {"R": "RSA", "P": "RSA", "E": "EC"}
_HASHES = {"256": hashlib.sha256, "384": hashlib.sha384, "512": hashlib.sha512}
# Pops a state record: GET + DEL in one step, so two callbacks with one state cannot both get it.
_TAKE_SCRIPT = "local v = redis.call('GET', KEYS[1]) if v then redis.call('DEL', KEYS[1]) end return v"


class OidcError(BitnetError):
    """Login through an OpenID Connect provider failed; ``str(err)`` says why (for logs, not for users)."""


class OidcStateError(OidcError):
    """The callback's state is unknown, expired or already used: the user should start the login again."""


@dataclass(frozen=True, slots=True)
class OidcSettings:
    """One provider.

    Attributes:
        issuer: the issuer URL exactly as the provider's discovery document states it (https; plain http only
            for loopback hosts, for tests and development).
        client_id: our client id at the provider.
        client_secret: our client secret at the provider.
        redirect_uri: our callback URL, registered at the provider.
        scopes: requested scopes; must include ``openid``.
    """

    issuer: str
    client_id: str
    client_secret: str
    redirect_uri: str
    scopes: tuple[str, ...] = ("openid", "email", "profile")

    def __post_init__(self) -> None:
        if not self.client_id or not self.client_secret:
            raise ConfigError("OIDC client id and secret must be set")
        if "openid" not in self.scopes:
            raise ConfigError("OIDC scopes must include 'openid'")
        for name, url in (("issuer", self.issuer), ("redirect_uri", self.redirect_uri)):
            if not _secure_url(url):
                raise ConfigError(f"OIDC {name} must be an https URL (http only on loopback): {url!r}")


@dataclass(frozen=True, slots=True)
class OidcIdentity:
    """Who the provider says logged in.

    Attributes:
        issuer: the provider.
        subject: the user's stable id at the provider (``sub``).
        email: the email the provider gave, if any.
        email_verified: whether the provider vouches that the user controls ``email``.
        name: display name, if given.
    """

    issuer: str
    subject: str
    email: str | None
    email_verified: bool
    name: str | None


def _secure_url(url: str) -> bool:
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return True
    if parts.scheme != "http" or not parts.hostname:
        return False
    if parts.hostname == "localhost":
        return True
    try:
        return ipaddress.ip_address(parts.hostname).is_loopback
    except ValueError:
        return False


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


def pkce_challenge(verifier: str) -> str:
    """The S256 code challenge of a PKCE code verifier (RFC 7636)."""
    return _b64url(hashlib.sha256(verifier.encode("ascii")).digest())


def _safe_return_to(return_to: str) -> bool:
    """A local path only: no scheme, no host, no ``//`` or ``/\\`` that browsers read as another host."""
    if not return_to.startswith("/") or return_to.startswith(("//", "/\\")):
        return False
    if any(ord(c) < 0x20 or c == "\\" for c in return_to):
        return False
    parts = urlsplit(return_to)
    return not parts.scheme and not parts.netloc


@dataclass(frozen=True, slots=True)
class _ProviderKey:
    kid: object
    kty: object
    use: object
    alg: object
    jwk: jwt.PyJWK


def _truthy(value: object) -> bool:
    # Some providers send "true" as a string.
    return value is True or (isinstance(value, str) and value.lower() == "true")


def _half_hash(value: str, alg: str) -> str:
    digest = _HASHES[alg[-3:]](value.encode("utf-8")).digest()
    return _b64url(digest[: len(digest) // 2])


class OidcClient:
    """Logs users in through one OpenID Connect provider.

    Args:
        settings: the provider and our client registration.
        redis: where login state lives between ``begin_login`` and ``complete_login`` (shared by replicas).
        http: an HTTP client to use (not closed by ``aclose``); by default one of our own.
    """

    def __init__(self, settings: OidcSettings, redis: RedisStore, *, http: httpx.AsyncClient | None = None) -> None:
        self.settings = settings
        self._redis = redis
        self._own_http = http is None
        self._http = http or httpx.AsyncClient(timeout=_HTTP_TIMEOUT_S, follow_redirects=False)
        self._discovery: tuple[float, dict[str, Any]] | None = None
        self._jwks: tuple[float, list[_ProviderKey]] | None = None
        self._lock = trio.Lock()

    async def aclose(self) -> None:
        """Close the HTTP client if it is ours."""
        if self._own_http:
            await self._http.aclose()

    # -- the flow ------------------------------------------------------------------------------------------

    async def begin_login(self, *, return_to: str = "/", binding: str | None = None) -> str:
        """Start a login; return the URL to send the browser to.

        Args:
            return_to: a local path to go to after the login; ``complete_login`` gives it back.
            binding: a random value the caller also puts in a cookie of this browser (HttpOnly, Secure,
                SameSite=Lax, 10 minutes) and passes to ``complete_login`` from that cookie. It ties the
                callback to the browser that started the login (no login CSRF: nobody can make a victim's
                browser finish a login the attacker started). Stored as SHA-256 only.

        Raises:
            OidcError: ``return_to`` is not a local path, or the provider's discovery failed.
        """
        if not _safe_return_to(return_to):
            raise OidcError("return_to must be a local path")
        config = await self._config()
        state = secrets.token_urlsafe(32)
        nonce = secrets.token_urlsafe(32)
        verifier = secrets.token_urlsafe(64)  # 86 characters: RFC 7636 wants 43 to 128
        record = {
            "issuer": self.settings.issuer,
            "nonce": nonce,
            "verifier": verifier,
            "return_to": return_to,
            "binding": None if binding is None else _digest(binding),
        }
        await self._redis.set(STATE_KEY_PREFIX + state, json.dumps(record), ex=STATE_TTL_S)
        params = {
            "response_type": "code",
            "client_id": self.settings.client_id,
            "redirect_uri": self.settings.redirect_uri,
            "scope": " ".join(self.settings.scopes),
            "state": state,
            "nonce": nonce,
            "code_challenge": pkce_challenge(verifier),
            "code_challenge_method": "S256",
        }
        parts = urlsplit(str(config["authorization_endpoint"]))
        query = [*parse_qsl(parts.query, keep_blank_values=True), *params.items()]
        return urlunsplit(parts._replace(query=urlencode(query, quote_via=quote)))

    async def complete_login(self, *, state: str, code: str, binding: str | None = None) -> tuple[OidcIdentity, str]:
        """Finish a login from the provider's callback parameters.

        Args:
            state: the callback's ``state``.
            code: the callback's ``code``.
            binding: the value given to ``begin_login``, from this browser's cookie (required if one was given).

        Returns:
            The verified identity and the ``return_to`` given to ``begin_login``.

        Raises:
            OidcStateError: unknown, expired or used state.
            OidcError: the code exchange or the ID token's verification failed.
        """
        if not state or len(state) > 200 or not code:
            raise OidcStateError("missing or malformed state")
        raw = await self._redis.eval(_TAKE_SCRIPT, [STATE_KEY_PREFIX + state], [])
        if raw is None:
            raise OidcStateError("unknown, expired or already used state")
        try:
            record = json.loads(raw)
            nonce, verifier, return_to = record["nonce"], record["verifier"], record["return_to"]
            expected_binding = record.get("binding")
        except (ValueError, KeyError, TypeError, AttributeError):
            raise OidcStateError("corrupt state record") from None
        if record.get("issuer") != self.settings.issuer:
            raise OidcStateError("state belongs to another provider")
        if expected_binding is not None and (
            binding is None or not hmac.compare_digest(str(expected_binding), _digest(binding))
        ):
            raise OidcStateError("login was started in another browser")
        tokens = await self._exchange(code, verifier)
        id_token = tokens.get("id_token")
        if not isinstance(id_token, str):
            raise OidcError("token response has no id_token")
        access_token = tokens.get("access_token")
        claims = await self.verify_id_token(
            id_token, nonce=nonce, access_token=access_token if isinstance(access_token, str) else None
        )
        if "email" not in claims and isinstance(access_token, str):
            claims = {**(await self._userinfo(access_token, claims["sub"])), **claims}
        email = claims.get("email")
        name = claims.get("name")
        identity = OidcIdentity(
            issuer=self.settings.issuer,
            subject=claims["sub"],
            email=email if isinstance(email, str) and email else None,
            email_verified=isinstance(email, str) and _truthy(claims.get("email_verified")),
            name=name if isinstance(name, str) and name else None,
        )
        return identity, return_to

    async def _exchange(self, code: str, verifier: str) -> dict[str, Any]:
        config = await self._config()
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": self.settings.redirect_uri,
            "code_verifier": verifier,
        }
        methods = config.get("token_endpoint_auth_methods_supported") or ["client_secret_basic"]
        auth: httpx.BasicAuth | None = None
        if "client_secret_basic" in methods:
            # RFC 6749 2.3.1: id and secret are form-urlencoded before they go into the Basic header.
            auth = httpx.BasicAuth(quote(self.settings.client_id, safe=""), quote(self.settings.client_secret, safe=""))
        elif "client_secret_post" in methods:
            form |= {"client_id": self.settings.client_id, "client_secret": self.settings.client_secret}
        else:
            raise OidcError(f"provider supports none of our client authentication methods: {methods}")
        body = await self._request("POST", config["token_endpoint"], data=form, auth=auth)
        if not isinstance(body, dict) or str(body.get("token_type", "")).lower() != "bearer":
            raise OidcError("token endpoint answered without a bearer token")
        return body

    async def _userinfo(self, access_token: str, subject: str) -> dict[str, Any]:
        config = await self._config()
        endpoint = config.get("userinfo_endpoint")
        if not isinstance(endpoint, str):
            return {}
        info = await self._request("GET", endpoint, headers={"Authorization": f"Bearer {access_token}"})
        if not isinstance(info, dict) or info.get("sub") != subject:  # OIDC Core 5.3.2: must match
            raise OidcError("userinfo subject differs from the ID token's")
        return {k: info[k] for k in ("email", "email_verified", "name") if k in info}

    # -- ID token ------------------------------------------------------------------------------------------

    async def verify_id_token(self, id_token: str, *, nonce: str, access_token: str | None) -> dict[str, Any]:
        """Verify an ID token from this provider and return its claims.

        Raises:
            OidcError: bad algorithm, no matching key, bad signature, wrong issuer or audience, expired,
                nonce or at_hash mismatch.
        """
        try:
            header = jwt.get_unverified_header(id_token)
        except jwt.PyJWTError:
            raise OidcError("malformed ID token") from None
        alg = header.get("alg")
        if alg not in _ALGORITHMS:
            raise OidcError(f"ID token algorithm {alg!r} not allowed")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise OidcError("malformed ID token kid")
        candidates = await self._keys_for(alg, kid)
        if not candidates:
            raise OidcError(f"no key of the provider matches the ID token (kid {kid!r})")
        claims: dict[str, Any] | None = None
        for key in candidates:
            try:
                claims = jwt.decode(
                    id_token,
                    key.jwk.key,
                    algorithms=[alg],
                    audience=self.settings.client_id,
                    issuer=self.settings.issuer,
                    leeway=_LEEWAY_S,
                    options={"require": ["iss", "aud", "sub", "exp", "iat"]},
                )
                break
            except jwt.InvalidSignatureError:
                continue
            except jwt.PyJWTError as exc:
                raise OidcError(f"ID token rejected: {exc}") from None
        if claims is None:
            raise OidcError("ID token signature does not verify")
        aud = claims["aud"]
        azp = claims.get("azp")
        if (isinstance(aud, list) and len(aud) > 1 and azp is None) or (
            azp is not None and azp != self.settings.client_id
        ):
            raise OidcError("ID token authorized party is not us")
        if not isinstance(claims["sub"], str) or not claims["sub"]:
            raise OidcError("ID token has no subject")
        token_nonce = claims.get("nonce")
        if not isinstance(token_nonce, str) or not hmac.compare_digest(token_nonce.encode(), nonce.encode()):
            raise OidcError("ID token nonce mismatch")
        at_hash = claims.get("at_hash")
        if at_hash is not None and (
            access_token is None
            or not isinstance(at_hash, str)
            or not hmac.compare_digest(at_hash.encode(), _half_hash(access_token, alg).encode())
        ):
            raise OidcError("ID token at_hash does not match the access token")
        return claims

    async def _keys_for(self, alg: str, kid: str | None) -> list[_ProviderKey]:
        def matching(keys: list[_ProviderKey]) -> list[_ProviderKey]:
            return [
                k
                for k in keys
                if k.kty == _KTY[alg[0]]
                and k.use in (None, "sig")
                and k.alg in (None, alg)
                and (kid is None or k.kid == kid)
            ]

        found = matching(await self._jwk_set())
        if not found and kid is not None:  # the provider may have rotated its keys
            found = matching(await self._jwk_set(refetch=True))
        return found

    async def _jwk_set(self, *, refetch: bool = False) -> list[_ProviderKey]:
        async with self._lock:
            cached = self._jwks
            if cached is not None:
                age = trio.current_time() - cached[0]
                if age < _JWKS_TTL_S and not (refetch and age >= _JWKS_REFETCH_MIN_S):
                    return cached[1]
            config = await self._config()
            document = await self._request("GET", config["jwks_uri"])
            entries = document.get("keys") if isinstance(document, dict) else None
            keys: list[_ProviderKey] = []
            for entry in entries if isinstance(entries, list) else []:
                if not isinstance(entry, dict):
                    continue
                try:
                    parsed = jwt.PyJWK.from_dict(entry)
                except jwt.PyJWTError:
                    continue  # a key type we cannot use
                keys.append(
                    _ProviderKey(entry.get("kid"), entry.get("kty"), entry.get("use"), entry.get("alg"), parsed)
                )
            if not keys:
                raise OidcError("provider's JWKS has no usable key")
            self._jwks = (trio.current_time(), keys)
            return keys

    # -- discovery and HTTP --------------------------------------------------------------------------------

    async def _config(self) -> dict[str, Any]:
        cached = self._discovery
        if cached is not None and trio.current_time() - cached[0] < _DISCOVERY_TTL_S:
            return cached[1]
        url = self.settings.issuer.rstrip("/") + "/.well-known/openid-configuration"
        config = await self._request("GET", url)
        if not isinstance(config, dict) or config.get("issuer") != self.settings.issuer:
            raise OidcError("discovery document names another issuer")
        for field in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
            value = config.get(field)
            if not isinstance(value, str) or not _secure_url(value):
                raise OidcError(f"discovery document has no usable {field}")
        self._discovery = (trio.current_time(), config)
        return config

    async def _request(self, method: str, url: str, **kwargs: Any) -> Any:
        try:
            response = await self._http.request(method, url, **kwargs)
        except httpx.HTTPError as exc:
            raise OidcError(f"{method} {url}: {type(exc).__name__}: {exc}") from None
        if len(response.content) > _MAX_RESPONSE_BYTES:
            raise OidcError(f"{method} {url}: response too large")
        if response.status_code != 200:
            detail = ""
            try:
                body = response.json()
                if isinstance(body, dict):
                    detail = f": {body.get('error', '')} {body.get('error_description', '')}".rstrip()
            except ValueError:
                pass
            raise OidcError(f"{method} {url}: HTTP {response.status_code}{detail}")
        try:
            return response.json()
        except ValueError:
            raise OidcError(f"{method} {url}: not JSON") from None


async def link_identity(db: Database, identity: OidcIdentity) -> str:
    """Return the id of the user this identity logs in as, linking or creating one as needed.

    In order: an identity linked before logs in as its user; else a user with the same email, only if the
    provider verified the email (the link is recorded; a local account whose own email was never verified
    loses its password and sessions, since whoever set them did not prove they own the address); else a new
    user, ``email_verified`` as the provider says.

    Raises:
        OidcError: the provider gave no email for a new identity, or an unverified email matches an existing
            account (never a way to take over an account).
    """
    for attempt in range(3):  # a concurrent login or sign-up can win a race on the unique constraints
        try:
            return await _link_once(db, identity)
        except ConflictError:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


async def _link_once(db: Database, identity: OidcIdentity) -> str:
    async with db.transaction() as conn:
        user_id = await conn.fetchval(
            "UPDATE oidc_identities SET last_login_at = now() WHERE issuer = $1 AND subject = $2 RETURNING user_id",
            identity.issuer,
            identity.subject,
        )
        if user_id is not None:
            return str(user_id)
        if not identity.email:
            raise OidcError("the provider gave no email address")
        existing = await conn.fetchrow(
            "SELECT id, email_verified FROM users WHERE lower(email) = lower($1) FOR UPDATE", identity.email
        )
        if existing is not None:
            if not identity.email_verified:
                raise OidcError("an account with this email exists and the provider has not verified the email")
            user: uuid.UUID = existing["id"]
            if not existing["email_verified"]:
                # Pre-hijacking defence: someone may have registered this address before its owner arrived.
                await conn.execute("UPDATE users SET email_verified = true, password_hash = NULL WHERE id = $1", user)
                await conn.execute(
                    "UPDATE refresh_token_families SET revoked_at = now(), revoke_reason = 'user'"
                    " WHERE user_id = $1 AND revoked_at IS NULL",
                    user,
                )
        else:
            user = await conn.fetchval(
                "INSERT INTO users (email, name, email_verified) VALUES ($1, $2, $3) RETURNING id",
                identity.email,
                (identity.name or "")[:200],
                identity.email_verified,
            )
        await conn.execute(
            "INSERT INTO oidc_identities (issuer, subject, user_id, email) VALUES ($1, $2, $3, $4)",
            identity.issuer,
            identity.subject,
            user,
            identity.email,
        )
        return str(user)
