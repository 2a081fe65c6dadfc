"""RS256 access tokens (JWT) signed with rotating keys that every replica shares through PostgreSQL.

Key timeline (times from the service's clock; L = ``key_lifetime_s``, T = ``access_ttl_s``):

- ``t0``: the first ``ensure_keys`` creates key K1, *active* (it signs new tokens), and K2, *next*: published
  in the JWKS but signing nothing, so relying parties that cache the JWKS know it before they see it.
- ``t0 + L`` (or ``rotate_now``): K1 is *superseded* (still verifies, still published), K2 becomes active,
  and K3 is published as next, all in one transaction.
- ``t0 + L + T + grace``: K1 is *retired*: its row is deleted, and tokens naming its kid are rejected. The
  grace covers clock skew and replicas that still sign with K1 from their cache (``_CACHE_TTL_S``).
  ``rotate_now(retire_old=True)`` retires K1 at once instead (suspected compromise; other replicas stop
  accepting it when their cache expires, within ``_CACHE_TTL_S``).

``ensure_keys`` performs whichever of these steps are due; call it at startup and periodically (every few
minutes). Replicas racing on it serialize on a PostgreSQL advisory lock, and unique indexes allow at most one
active and one next key whatever happens.

Private keys are stored as ``0x01 || nonce (12 bytes) || AES-256-GCM(PKCS#8 DER, aad = "bitnet-actor/jwt-key/
v1:" + kid)`` under the 32-byte ``encryption_key``; the kid is the RFC 7638 thumbprint of the public key.

Verification accepts only ``alg`` RS256 with a ``kid`` of one of our unretired keys and ``typ`` ``at+jwt``
(RFC 9068), then checks signature, issuer, audience, and expiry against the injectable clock.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

import jwt
import trio
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from jwt.algorithms import RSAAlgorithm

from bitnet_actor.errors import BitnetError

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from bitnet_actor.stores.postgres import Connection, Database, Record

__all__ = [
    "ALGORITHM",
    "TOKEN_TYPE",
    "AccessClaims",
    "InvalidTokenError",
    "JwtService",
    "KeyDecryptionError",
]

ALGORITHM: Final = "RS256"
TOKEN_TYPE: Final = "at+jwt"  # RFC 9068: an ID token or other JWT can never pass as an access token
_RSA_BITS = 2048
_ENC_VERSION = b"\x01"
_ENC_AAD = b"bitnet-actor/jwt-key/v1:"
_LOCK_NAME = "bitnet_jwt_signing_keys"
_CACHE_TTL_S = 60.0  # how long a replica trusts its copy of the key set (monotonic seconds)
_RELOAD_MIN_INTERVAL_S = 1.0  # unknown kids reload the key set at most this often
_GRACE_S = 2 * _CACHE_TTL_S  # added to the access TTL before a superseded key is retired
_KEY_COLUMNS = "kid, public_jwk, private_key, created_at, activated_at, superseded_at, retires_at"


class InvalidTokenError(BitnetError):
    """A token was rejected. ``str(err)`` is a short reason for logs; clients should get a generic 401."""


class KeyDecryptionError(BitnetError):
    """A signing key in the database cannot be decrypted: ``encryption_key`` is not the one that wrote it."""


@dataclass(frozen=True, slots=True)
class AccessClaims:
    """What a verified access token says.

    Attributes:
        subject: the user id.
        org_id: the organization the token acts for, or None for a user-level token.
        scopes: the scopes granted.
        expires_at: the ``exp`` claim, seconds since the epoch.
        token_id: the ``jti`` claim.
        issued_at: the ``iat`` claim.
        key_id: the kid of the key that signed it.
    """

    subject: str
    org_id: str | None
    scopes: tuple[str, ...]
    expires_at: float
    token_id: str
    issued_at: float
    key_id: str


@dataclass(frozen=True, slots=True)
class _PublicKey:
    kid: str
    jwk: dict[str, Any]
    key: rsa.RSAPublicKey
    retires_at: float | None  # None while active or next
    order: int  # 0 active, 1 next, 2 superseded: the JWKS lists them in this order


@dataclass(frozen=True, slots=True)
class _KeySet:
    public: dict[str, _PublicKey]
    signing_kid: str | None
    signing_key: rsa.RSAPrivateKey | None
    loaded_at: float  # trio.current_time()


@dataclass(frozen=True, slots=True)
class _NewKey:
    kid: str
    jwk: dict[str, Any]
    sealed: bytes


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _thumbprint(jwk: dict[str, Any]) -> str:
    """RFC 7638 thumbprint of an RSA public JWK."""
    canonical = json.dumps({"e": jwk["e"], "kty": "RSA", "n": jwk["n"]}, separators=(",", ":"), sort_keys=True)
    return _b64url(hashlib.sha256(canonical.encode("ascii")).digest())


def _seal(encryption_key: bytes, kid: str, plaintext: bytes) -> bytes:
    nonce = secrets.token_bytes(12)
    return _ENC_VERSION + nonce + AESGCM(encryption_key).encrypt(nonce, plaintext, _ENC_AAD + kid.encode())


def _unseal(encryption_key: bytes, kid: str, sealed: bytes) -> bytes:
    if sealed[:1] != _ENC_VERSION or len(sealed) < 1 + 12 + 16:
        raise KeyDecryptionError(f"JWT signing key {kid}: unknown storage format")
    try:
        return AESGCM(encryption_key).decrypt(sealed[1:13], sealed[13:], _ENC_AAD + kid.encode())
    except InvalidTag:
        raise KeyDecryptionError(
            f"JWT signing key {kid} cannot be decrypted: this replica's encryption key is not the one that stored it"
        ) from None


def _generate_key(encryption_key: bytes) -> _NewKey:
    """Generate an RSA key and seal its private half (CPU-heavy: run in a thread)."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=_RSA_BITS)
    jwk: dict[str, Any] = RSAAlgorithm.to_jwk(private.public_key(), as_dict=True)
    kid = _thumbprint(jwk)
    jwk = {"kty": "RSA", "n": jwk["n"], "e": jwk["e"], "kid": kid, "alg": ALGORITHM, "use": "sig"}
    der = private.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return _NewKey(kid, jwk, _seal(encryption_key, kid, der))


def _load_private(encryption_key: bytes, kid: str, sealed: bytes) -> rsa.RSAPrivateKey:
    """Decrypt and parse a private key (parsing checks the key: ~ms of CPU, run in a thread)."""
    key = serialization.load_der_private_key(_unseal(encryption_key, kid, sealed), password=None)
    if not isinstance(key, rsa.RSAPrivateKey):  # pragma: no cover - we only ever store RSA keys
        raise KeyDecryptionError(f"JWT signing key {kid} is not an RSA key")
    return key


def _ts(value: float) -> datetime:
    return datetime.fromtimestamp(value, UTC)


def _epoch(value: datetime | None) -> float | None:
    return None if value is None else value.timestamp()


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


class JwtService:
    """Issues and verifies access tokens; keeps the signing keys rotating.

    Args:
        db: the database holding ``jwt_signing_keys``.
        encryption_key: 32 bytes; the AES-256-GCM key the private keys are sealed with (same on all replicas).
        issuer: the ``iss`` of our tokens (the service's public URL).
        audience: the ``aud`` of our tokens.
        access_ttl_s: lifetime of an access token.
        key_lifetime_s: how long a key signs before the next one takes over.
        leeway_s: clock skew tolerated on ``exp`` and ``iat``.
        clock: seconds since the epoch; injectable for tests.
    """

    def __init__(
        self,
        db: Database,
        *,
        encryption_key: bytes,
        issuer: str,
        audience: str = "bitnet-actor",
        access_ttl_s: int = 900,
        key_lifetime_s: int = 30 * 86400,
        leeway_s: int = 30,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if len(encryption_key) != 32:
            raise ValueError("encryption_key must be 32 bytes (AES-256)")
        if access_ttl_s <= 0 or key_lifetime_s <= 0 or leeway_s < 0:
            raise ValueError("access_ttl_s and key_lifetime_s must be positive, leeway_s not negative")
        if not issuer or not audience:
            raise ValueError("issuer and audience must not be empty")
        self._db = db
        self._encryption_key = bytes(encryption_key)
        self.issuer = issuer
        self.audience = audience
        self.access_ttl_s = access_ttl_s
        self.key_lifetime_s = key_lifetime_s
        self._leeway_s = leeway_s
        self._clock = clock
        self._cache: _KeySet | None = None
        self._cache_lock = trio.Lock()
        self._private: tuple[str, rsa.RSAPrivateKey] | None = None  # the decrypted signing key, by kid

    # -- keys ----------------------------------------------------------------------------------------------

    async def ensure_keys(self) -> None:
        """Bring the key set up to date: an active key, a published next key, no key past its retire time.

        Idempotent and safe to call from several replicas at once. Cheap when nothing is due (one query).
        """
        rows = await self._db.fetch(f"SELECT {_KEY_COLUMNS} FROM jwt_signing_keys")
        if not self._due(rows, self._clock()):
            return
        async with self._db.transaction() as conn:
            await self._lock(conn)
            now = self._clock()
            rows = await conn.fetch(f"SELECT {_KEY_COLUMNS} FROM jwt_signing_keys")
            await self._apply(conn, rows, now, force_rotation=False)
        self._cache = None

    async def rotate_now(self, *, retire_old: bool = False) -> None:
        """Rotate at once: the next key signs from now on, the active one is superseded, a new next appears.

        Args:
            retire_old: also retire the key that was active, and every superseded key, right now: their
                tokens stop verifying at once (clients fall back on their refresh tokens). For a suspected
                key compromise; without it the old key keeps verifying until its tokens have expired.
        """
        async with self._db.transaction() as conn:
            await self._lock(conn)
            now = self._clock()
            rows = await conn.fetch(f"SELECT {_KEY_COLUMNS} FROM jwt_signing_keys")
            await self._apply(conn, rows, now, force_rotation=True, retire_old=retire_old)
        self._cache = None

    async def jwks(self) -> dict[str, Any]:
        """The JWKS document: the active key, the next key and superseded keys not yet retired."""
        keys = await self._keyset()
        now = self._clock()
        live = [k for k in keys.public.values() if k.retires_at is None or now < k.retires_at]
        live.sort(key=lambda k: k.order)
        return {"keys": [dict(k.jwk) for k in live]}

    def _due(self, rows: Sequence[Record], now: float) -> bool:
        active = [r for r in rows if r["activated_at"] is not None and r["superseded_at"] is None]
        has_next = any(r["activated_at"] is None for r in rows)
        retire = any(r["retires_at"] is not None and r["retires_at"].timestamp() <= now for r in rows)
        rotation_due = not active or active[0]["activated_at"].timestamp() + self.key_lifetime_s <= now
        return retire or rotation_due or not has_next

    @staticmethod
    async def _lock(conn: Connection) -> None:
        await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", _LOCK_NAME)

    async def _apply(
        self, conn: Connection, rows: Sequence[Record], now: float, *, force_rotation: bool, retire_old: bool = False
    ) -> None:
        """Rotate, publish and retire as due. Runs under the advisory lock, inside one transaction."""
        active = next((r for r in rows if r["activated_at"] is not None and r["superseded_at"] is None), None)
        upcoming = next((r for r in rows if r["activated_at"] is None), None)
        rotate = force_rotation or active is None or active["activated_at"].timestamp() + self.key_lifetime_s <= now
        if rotate:
            if active is not None:
                await conn.execute(
                    "UPDATE jwt_signing_keys SET superseded_at = $2, retires_at = $3 WHERE kid = $1",
                    active["kid"],
                    _ts(now),
                    _ts(now if retire_old else now + self.access_ttl_s + self._leeway_s + _GRACE_S),
                )
            if upcoming is not None:
                await conn.execute(
                    "UPDATE jwt_signing_keys SET activated_at = $2 WHERE kid = $1", upcoming["kid"], _ts(now)
                )
            else:
                await self._insert(conn, now, activated=True)
            upcoming = None
        if upcoming is None:
            await self._insert(conn, now, activated=False)
        if retire_old:
            await conn.execute("UPDATE jwt_signing_keys SET retires_at = $1 WHERE retires_at > $1", _ts(now))
        await conn.execute("DELETE FROM jwt_signing_keys WHERE retires_at <= $1", _ts(now))

    async def _insert(self, conn: Connection, now: float, *, activated: bool) -> None:
        key = await trio.to_thread.run_sync(_generate_key, self._encryption_key)
        await conn.execute(
            "INSERT INTO jwt_signing_keys (kid, algorithm, public_jwk, private_key, created_at, activated_at)"
            " VALUES ($1, $2, $3, $4, $5, $6)",
            key.kid,
            ALGORITHM,
            key.jwk,
            key.sealed,
            _ts(now),
            _ts(now) if activated else None,
        )

    async def _keyset(self, *, reload: bool = False) -> _KeySet:
        """The cached key set; reloaded after ``_CACHE_TTL_S``, or on ``reload`` (rate-limited)."""
        max_age = _RELOAD_MIN_INTERVAL_S if reload else _CACHE_TTL_S
        cached = self._cache
        if cached is not None and trio.current_time() - cached.loaded_at < max_age:
            return cached
        async with self._cache_lock:  # one reload at a time; the others use its result
            cached = self._cache
            if cached is not None and trio.current_time() - cached.loaded_at < max_age:
                return cached
            fresh = await self._load()
            self._cache = fresh
            return fresh

    async def _load(self) -> _KeySet:
        rows = await self._db.fetch(f"SELECT {_KEY_COLUMNS} FROM jwt_signing_keys")
        public: dict[str, _PublicKey] = {}
        signing_kid: str | None = None
        signing_key: rsa.RSAPrivateKey | None = None
        for row in rows:
            kid: str = row["kid"]
            jwk = dict(row["public_jwk"])
            key = RSAAlgorithm.from_jwk(jwk)
            if not isinstance(key, rsa.RSAPublicKey):  # pragma: no cover - we only ever store RSA keys
                continue
            if row["activated_at"] is None:
                order = 1
            elif row["superseded_at"] is None:
                order = 0
                signing_kid = kid
                if self._private is not None and self._private[0] == kid:
                    signing_key = self._private[1]
                else:
                    signing_key = await trio.to_thread.run_sync(
                        _load_private, self._encryption_key, kid, bytes(row["private_key"])
                    )
                    self._private = (kid, signing_key)
            else:
                order = 2
            public[kid] = _PublicKey(kid, jwk, key, _epoch(row["retires_at"]), order)
        return _KeySet(public, signing_kid, signing_key, trio.current_time())

    # -- tokens --------------------------------------------------------------------------------------------

    async def issue_access_token(self, *, user_id: str, org_id: str | None, scopes: Sequence[str]) -> tuple[str, int]:
        """Sign an access token with the active key.

        Args:
            user_id: the ``sub``.
            org_id: the organization the token acts for (claim ``org_id``), or None.
            scopes: the scopes to grant (claim ``scope``, space-separated).

        Returns:
            The token and its lifetime in seconds (``expires_in``).
        """
        if any(not s or " " in s for s in scopes):
            raise ValueError("scopes must be non-empty and contain no spaces")
        keys = await self._keyset()
        if keys.signing_key is None:  # first use before any ensure_keys
            await self.ensure_keys()
            keys = await self._keyset()
        if keys.signing_key is None or keys.signing_kid is None:  # pragma: no cover - ensure_keys made one
            raise BitnetError("no active JWT signing key")
        now = int(self._clock())
        payload: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": str(user_id),
            "iat": now,
            "exp": now + self.access_ttl_s,
            "jti": secrets.token_urlsafe(16),
            "scope": " ".join(scopes),
        }
        if org_id is not None:
            payload["org_id"] = str(org_id)
        token = jwt.encode(
            payload,
            keys.signing_key,
            algorithm=ALGORITHM,
            headers={"kid": keys.signing_kid, "typ": TOKEN_TYPE},
        )
        return token, self.access_ttl_s

    async def verify_access_token(self, token: str) -> AccessClaims:
        """Check an access token and return its claims.

        Raises:
            InvalidTokenError: with a short reason: malformed, algorithm not allowed, wrong type, unknown or
                retired key, bad signature, wrong issuer or audience, expired, issued in the future.
        """
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise InvalidTokenError("malformed token") from None
        if header.get("alg") != ALGORITHM:
            raise InvalidTokenError("algorithm not allowed")
        if str(header.get("typ", "")).lower() not in (TOKEN_TYPE, f"application/{TOKEN_TYPE}"):
            raise InvalidTokenError("not an access token")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise InvalidTokenError("no kid")
        keys = await self._keyset()
        key = keys.public.get(kid)
        if key is None:  # maybe another replica just rotated
            keys = await self._keyset(reload=True)
            key = keys.public.get(kid)
        if key is None:
            raise InvalidTokenError("unknown kid")
        now = self._clock()
        if key.retires_at is not None and now >= key.retires_at:
            raise InvalidTokenError("key retired")
        try:
            claims = jwt.decode(
                token,
                key.key,
                algorithms=[ALGORITHM],
                audience=self.audience,
                issuer=self.issuer,
                options={
                    "require": ["iss", "aud", "sub", "exp", "iat", "jti"],
                    "verify_exp": False,  # checked below against our clock
                    "verify_iat": False,
                    "verify_nbf": False,
                    "strict_aud": True,
                },
            )
        except jwt.InvalidSignatureError:
            raise InvalidTokenError("bad signature") from None
        except jwt.InvalidAudienceError:
            raise InvalidTokenError("wrong audience") from None
        except jwt.InvalidIssuerError:
            raise InvalidTokenError("wrong issuer") from None
        except jwt.MissingRequiredClaimError as exc:
            raise InvalidTokenError(f"missing claim {exc.claim}") from None
        except jwt.PyJWTError:
            raise InvalidTokenError("invalid token") from None
        return self._claims(claims, kid, now)

    def _claims(self, claims: dict[str, Any], kid: str, now: float) -> AccessClaims:
        exp, iat, sub, jti = claims["exp"], claims["iat"], claims["sub"], claims["jti"]
        scope, org_id = claims.get("scope", ""), claims.get("org_id")
        if not _is_number(exp) or not _is_number(iat):
            raise InvalidTokenError("bad exp or iat")
        if now >= exp + self._leeway_s:
            raise InvalidTokenError("expired")
        if iat > now + self._leeway_s:
            raise InvalidTokenError("issued in the future")
        if "nbf" in claims and (not _is_number(claims["nbf"]) or claims["nbf"] > now + self._leeway_s):
            raise InvalidTokenError("not yet valid")
        if not isinstance(sub, str) or not sub or not isinstance(jti, str) or not isinstance(scope, str):
            raise InvalidTokenError("bad sub, jti or scope")
        if org_id is not None and not isinstance(org_id, str):
            raise InvalidTokenError("bad org_id")
        return AccessClaims(
            subject=sub,
            org_id=org_id,
            scopes=tuple(scope.split()),
            expires_at=float(exp),
            token_id=jti,
            issued_at=float(iat),
            key_id=kid,
        )
