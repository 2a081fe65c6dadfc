-- 0003: authentication tokens. JWT signing keys (RS256, rotated), refresh token families (rotated on use,
-- revoked as a whole when a used token comes back) and identities at OpenID Connect providers. All global:
-- they belong to users and signing keys, not to one organization, so no row-level security. Written by
-- bitnet_actor/services/jwt.py, refresh.py and oidc.py, which pass every time in (the services' clock).

-- One row per signing key. The private key is never stored in the clear:
--   private_key = 0x01 || 12-byte nonce || AES-256-GCM(PKCS#8 DER of the key, aad = 'bitnet-actor/jwt-key/v1:' || kid)
-- under the 32-byte encryption key every replica is given.
-- Life of a key: next (activated_at NULL: published in the JWKS, signs nothing) -> active (signs new tokens)
-- -> superseded (superseded_at set: verifies, still published) -> deleted at retires_at, after the last
-- token it signed has expired.
CREATE TABLE jwt_signing_keys (
    kid           text        PRIMARY KEY CHECK (length(kid) BETWEEN 1 AND 100),
    algorithm     text        NOT NULL CHECK (algorithm = 'RS256'),
    public_jwk    jsonb       NOT NULL,
    private_key   bytea       NOT NULL CHECK (length(private_key) > 29 AND substring(private_key FOR 1) = '\x01'),
    created_at    timestamptz NOT NULL,
    activated_at  timestamptz,
    superseded_at timestamptz,
    retires_at    timestamptz,
    CHECK ((superseded_at IS NULL) = (retires_at IS NULL)),
    CHECK (superseded_at IS NULL OR activated_at IS NOT NULL)
);
-- At most one active and one next key, whatever replicas race.
CREATE UNIQUE INDEX jwt_signing_keys_one_active ON jwt_signing_keys ((true))
    WHERE activated_at IS NOT NULL AND superseded_at IS NULL;
CREATE UNIQUE INDEX jwt_signing_keys_one_next ON jwt_signing_keys ((true)) WHERE activated_at IS NULL;

-- A family is one login session: the first refresh token and every token rotated from it. Revoking the
-- family (logout, reuse of a used token, all of a user's sessions) ends every token in it.
CREATE TABLE refresh_token_families (
    id            uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id       uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    org_id        uuid        REFERENCES organizations (id) ON DELETE CASCADE,
    created_at    timestamptz NOT NULL,
    expires_at    timestamptz NOT NULL,
    revoked_at    timestamptz,
    revoke_reason text        CHECK (revoke_reason IN ('logout', 'reuse', 'user', 'admin')),
    CHECK ((revoked_at IS NULL) = (revoke_reason IS NULL))
);
CREATE INDEX refresh_token_families_user_id_idx ON refresh_token_families (user_id) WHERE revoked_at IS NULL;
CREATE INDEX refresh_token_families_expires_at_idx ON refresh_token_families (expires_at);

-- Tokens are stored only as SHA-256 of the token. A used token (used_at set) is kept until its family
-- goes, so presenting it again is recognised as reuse.
CREATE TABLE refresh_tokens (
    token_hash  bytea       PRIMARY KEY CHECK (length(token_hash) = 32),
    family_id   uuid        NOT NULL REFERENCES refresh_token_families (id) ON DELETE CASCADE,
    generation  integer     NOT NULL CHECK (generation >= 1),
    issued_at   timestamptz NOT NULL,
    expires_at  timestamptz NOT NULL,
    used_at     timestamptz,
    UNIQUE (family_id, generation)
);

-- A user's accounts at OpenID Connect providers, by the provider's (issuer, subject): never by email.
CREATE TABLE oidc_identities (
    issuer        text        NOT NULL,
    subject       text        NOT NULL,
    user_id       uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    email         text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_login_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (issuer, subject)
);
CREATE INDEX oidc_identities_user_id_idx ON oidc_identities (user_id);

GRANT SELECT, INSERT, UPDATE, DELETE ON jwt_signing_keys, refresh_token_families, refresh_tokens,
    oidc_identities TO bitnet_app;
