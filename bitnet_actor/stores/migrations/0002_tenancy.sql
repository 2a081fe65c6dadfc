-- 0002: tenancy. Users belong to organizations through memberships with roles; API keys, invitations and
-- the audit log; every tenant table carries org_id and is guarded by row-level security; the service runs
-- as the role bitnet_app, which owns nothing and is not a superuser.
--
-- Operators: the service connects as bitnet_app (BITNET_DATABASE_APP_USER). This migration creates it with
-- LOGIN and no password; where PostgreSQL asks for passwords, set one with
--   ALTER ROLE bitnet_app PASSWORD '...';
-- and give it to the service as BITNET_DATABASE_APP_PASSWORD. Migrations run as the owner of the tables
-- (the user of BITNET_DATABASE_URL).

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'bitnet_app') THEN
        CREATE ROLE bitnet_app LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT;
    END IF;
END
$$;

-- One name for the tenant column everywhere.
ALTER TABLE models RENAME COLUMN organization_id TO org_id;
ALTER TABLE inference_requests RENAME COLUMN organization_id TO org_id;
ALTER TABLE usage_records RENAME COLUMN organization_id TO org_id;
ALTER INDEX inference_requests_org_created_idx RENAME TO inference_requests_org_id_created_idx;
ALTER INDEX usage_records_org_period_idx RENAME TO usage_records_org_id_period_idx;

-- Users are global (one login, several organizations); memberships replace users.organization_id / role.
ALTER TABLE users
    ADD COLUMN name text NOT NULL DEFAULT '' CHECK (length(name) <= 200),
    ADD COLUMN password_hash text,
    ADD COLUMN email_verified boolean NOT NULL DEFAULT false,
    ADD COLUMN disabled_at timestamptz;

CREATE TABLE memberships (
    org_id      uuid        NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    user_id     uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    role        text        NOT NULL CHECK (role IN ('owner', 'admin', 'member', 'viewer', 'billing')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (org_id, user_id)
);
CREATE INDEX memberships_user_id_idx ON memberships (user_id);

INSERT INTO memberships (org_id, user_id, role)
SELECT organization_id, id, CASE WHEN role IN ('owner', 'admin', 'member', 'viewer', 'billing') THEN role ELSE 'member' END
FROM users WHERE organization_id IS NOT NULL;
ALTER TABLE users DROP COLUMN organization_id, DROP COLUMN role;

-- Secrets are stored only as SHA-256 of the key; prefix and last4 let people recognise a key.
CREATE TABLE api_keys (
    id           uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    org_id       uuid        NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    created_by   uuid        REFERENCES users (id) ON DELETE SET NULL,
    name         text        NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    key_hash     bytea       NOT NULL UNIQUE CHECK (length(key_hash) = 32),
    prefix       text        NOT NULL,
    last4        text        NOT NULL,
    scopes       text[]      NOT NULL CHECK (scopes <@ ARRAY['inference', 'models:read', 'models:write',
                                                           'billing:read', 'admin']::text[]),
    expires_at   timestamptz,
    revoked_at   timestamptz,
    last_used_at timestamptz,
    rotated_to   uuid        REFERENCES api_keys (id) ON DELETE SET NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX api_keys_org_id_idx ON api_keys (org_id, created_at DESC);

CREATE TABLE invitations (
    id          uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    org_id      uuid        NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    email       text        NOT NULL,
    role        text        NOT NULL CHECK (role IN ('owner', 'admin', 'member', 'viewer', 'billing')),
    token_hash  bytea       NOT NULL UNIQUE,
    invited_by  uuid        REFERENCES users (id) ON DELETE SET NULL,
    expires_at  timestamptz NOT NULL,
    accepted_at timestamptz,
    revoked_at  timestamptz,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX invitations_org_id_idx ON invitations (org_id, created_at DESC);

-- Single-use, expiring tokens sent by email that belong to no organization yet (sign-up verification,
-- password set / reset). Looked up by hash only.
CREATE TABLE email_tokens (
    id          uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    token_hash  bytea       NOT NULL UNIQUE,
    purpose     text        NOT NULL CHECK (purpose IN ('signup', 'password_set')),
    email       text        NOT NULL,
    payload     jsonb       NOT NULL DEFAULT '{}'::jsonb,
    expires_at  timestamptz NOT NULL,
    used_at     timestamptz,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- The audit log: append-only and hash-chained per organization. Each row's hash covers its content and
-- the previous row's hash, so editing or deleting a row breaks the chain from there on.
CREATE TABLE audit_log (
    id            bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    org_id        uuid        NOT NULL REFERENCES organizations (id) ON DELETE RESTRICT,
    seq           bigint      NOT NULL,
    actor_user_id uuid,
    actor_key_id  uuid,
    action        text        NOT NULL,
    target_type   text        NOT NULL DEFAULT '',
    target_id     text        NOT NULL DEFAULT '',
    ip            text        NOT NULL DEFAULT '',
    user_agent    text        NOT NULL DEFAULT '',
    details       jsonb       NOT NULL DEFAULT '{}'::jsonb,
    created_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    prev_hash     bytea       NOT NULL,
    hash          bytea       NOT NULL,
    UNIQUE (org_id, seq)
);

-- The canonical text of a row, hashed with the previous hash. One definition, used by the insert trigger
-- and by `bitnet-actor audit verify`.
CREATE FUNCTION bitnet_audit_hash(prev bytea, r audit_log) RETURNS bytea
LANGUAGE sql IMMUTABLE AS $$
    SELECT sha256(prev || convert_to(concat_ws(E'\x1f',
        r.org_id::text, r.seq::text, coalesce(r.actor_user_id::text, ''), coalesce(r.actor_key_id::text, ''),
        r.action, r.target_type, r.target_id, r.ip, r.user_agent, r.details::text,
        to_char(r.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US')), 'UTF8'))
$$;

CREATE FUNCTION bitnet_audit_chain() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    last_row audit_log;
BEGIN
    -- Serialize writers of one organization's chain.
    PERFORM pg_advisory_xact_lock(hashtextextended('bitnet_audit:' || NEW.org_id::text, 0));
    SELECT * INTO last_row FROM audit_log WHERE org_id = NEW.org_id ORDER BY seq DESC LIMIT 1;
    NEW.seq := coalesce(last_row.seq, 0) + 1;
    NEW.created_at := date_trunc('microseconds', clock_timestamp());
    NEW.prev_hash := coalesce(last_row.hash, '\x'::bytea);
    NEW.hash := bitnet_audit_hash(NEW.prev_hash, NEW);
    RETURN NEW;
END
$$;
CREATE TRIGGER audit_log_chain BEFORE INSERT ON audit_log FOR EACH ROW EXECUTE FUNCTION bitnet_audit_chain();

CREATE FUNCTION bitnet_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only' USING ERRCODE = 'insufficient_privilege';
END
$$;
CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION bitnet_audit_append_only();

-- Row-level security: a transaction sees the rows of the organization in app.org_id and nothing else
-- (no organization set: no rows). FORCE makes it apply to the tables' owner too.
CREATE FUNCTION bitnet_current_org() RETURNS uuid LANGUAGE sql STABLE AS $$
    SELECT NULLIF(current_setting('app.org_id', true), '')::uuid
$$;

ALTER TABLE organizations ENABLE ROW LEVEL SECURITY;
ALTER TABLE organizations FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant ON organizations TO bitnet_app USING (id = bitnet_current_org());

ALTER TABLE memberships ENABLE ROW LEVEL SECURITY;
ALTER TABLE memberships FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant ON memberships TO bitnet_app USING (org_id = bitnet_current_org());

ALTER TABLE api_keys ENABLE ROW LEVEL SECURITY;
ALTER TABLE api_keys FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant ON api_keys TO bitnet_app USING (org_id = bitnet_current_org());

ALTER TABLE invitations ENABLE ROW LEVEL SECURITY;
ALTER TABLE invitations FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant ON invitations TO bitnet_app USING (org_id = bitnet_current_org());

ALTER TABLE audit_log ENABLE ROW LEVEL SECURITY;
ALTER TABLE audit_log FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant ON audit_log TO bitnet_app USING (org_id = bitnet_current_org());

-- Models: an organization's own, plus the platform's (org_id NULL), which it may read but not change.
ALTER TABLE models ENABLE ROW LEVEL SECURITY;
ALTER TABLE models FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_read ON models FOR SELECT TO bitnet_app USING (org_id = bitnet_current_org() OR org_id IS NULL);
CREATE POLICY tenant_write ON models FOR INSERT TO bitnet_app WITH CHECK (org_id = bitnet_current_org());
CREATE POLICY tenant_update ON models FOR UPDATE TO bitnet_app USING (org_id = bitnet_current_org());
CREATE POLICY tenant_delete ON models FOR DELETE TO bitnet_app USING (org_id = bitnet_current_org());

ALTER TABLE inference_requests ENABLE ROW LEVEL SECURITY;
ALTER TABLE inference_requests FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant ON inference_requests TO bitnet_app USING (org_id = bitnet_current_org());

ALTER TABLE usage_records ENABLE ROW LEVEL SECURITY;
ALTER TABLE usage_records FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant ON usage_records TO bitnet_app USING (org_id = bitnet_current_org());

-- The tables' owner (the migrating user) sees every row, so the narrow SECURITY DEFINER lookups below and
-- `bitnet-actor audit verify` work even where it is not a superuser. The service role never gets this.
DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['organizations', 'memberships', 'api_keys', 'invitations', 'audit_log', 'models',
                             'inference_requests', 'usage_records'] LOOP
        EXECUTE format('CREATE POLICY owner_all ON %I TO %I USING (true) WITH CHECK (true)', t, current_user);
    END LOOP;
END
$$;

-- Lookups that must cross organizations before the tenant is known. Each is narrow: one key by hash, one
-- user's memberships, one invitation by hash. SECURITY DEFINER runs them as the owner.
CREATE FUNCTION bitnet_api_key_by_hash(p_hash bytea)
RETURNS TABLE (id uuid, org_id uuid, name text, scopes text[], expires_at timestamptz, revoked_at timestamptz)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT k.id, k.org_id, k.name, k.scopes, k.expires_at, k.revoked_at FROM api_keys k WHERE k.key_hash = p_hash
$$;

CREATE FUNCTION bitnet_user_memberships(p_user uuid)
RETURNS TABLE (org_id uuid, name text, plan text, role text, created_at timestamptz)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT o.id, o.name, o.plan, m.role, o.created_at
    FROM memberships m JOIN organizations o ON o.id = m.org_id
    WHERE m.user_id = p_user ORDER BY o.created_at
$$;

CREATE FUNCTION bitnet_invitation_by_hash(p_hash bytea)
RETURNS TABLE (id uuid, org_id uuid, email text, role text, expires_at timestamptz, accepted_at timestamptz,
               revoked_at timestamptz)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT i.id, i.org_id, i.email, i.role, i.expires_at, i.accepted_at, i.revoked_at
    FROM invitations i WHERE i.token_hash = p_hash
$$;

CREATE FUNCTION bitnet_org_by_name(p_name text) RETURNS uuid
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT id FROM organizations WHERE lower(name) = lower(p_name)
$$;

-- What the service role may do. No DELETE or UPDATE on the audit log; nothing on schema_migrations.
GRANT USAGE ON SCHEMA public TO bitnet_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON organizations, users, memberships, api_keys, invitations, email_tokens,
    models, inference_requests, usage_records TO bitnet_app;
GRANT SELECT, INSERT ON audit_log TO bitnet_app;
REVOKE ALL ON FUNCTION bitnet_api_key_by_hash(bytea), bitnet_user_memberships(uuid),
    bitnet_invitation_by_hash(bytea), bitnet_org_by_name(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION bitnet_api_key_by_hash(bytea), bitnet_user_memberships(uuid),
    bitnet_invitation_by_hash(bytea), bitnet_org_by_name(text), bitnet_current_org(),
    bitnet_ensure_partitions(regclass, integer) TO bitnet_app;

-- Partition maintenance runs from the service role, but creating partitions takes the tables' owner.
ALTER FUNCTION bitnet_ensure_partitions(regclass, integer) SECURITY DEFINER SET search_path = public, pg_temp;
