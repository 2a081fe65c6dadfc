-- 0005: the model registry. Content-addressed blobs; named models with immutable versions, movable aliases
-- and lineage; resumable uploads; conversion jobs; A/B routes. An organization's rows are its own (RLS);
-- platform rows (org_id NULL: `serve --model`, the demo model) are readable by every organization and
-- written only by the tables' owner. Replaces the `models` table of 0001.

-- One stored file (a GGUF, or an HF directory packed as an archive by the registry), by the sha256 of its
-- plaintext. Two organizations uploading the same bytes get two rows (each encrypted under its own keys);
-- the model cache shares one loaded copy by sha256.
CREATE TABLE model_blobs (
    id          uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    org_id      uuid        REFERENCES organizations (id) ON DELETE CASCADE,
    sha256      text        NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    object_key  text        NOT NULL,
    bytes       bigint      NOT NULL CHECK (bytes >= 0),
    format      text        NOT NULL CHECK (format IN ('gguf', 'tar', 'tar.gz', 'zip')),  -- as uploaded
    created_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT model_blobs_org_sha_key UNIQUE NULLS NOT DISTINCT (org_id, sha256)
);

-- A version of a named model. `pending` while its file is inspected; `ready` once published (then its
-- file, facts and origin never change: a trigger refuses it); `failed` with the inspector's message;
-- `deprecated` still serves but is not listed first; deleted rows go.
CREATE TABLE model_versions (
    id              uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    org_id          uuid        REFERENCES organizations (id) ON DELETE CASCADE,
    name            text        NOT NULL CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$'),
    version         text        NOT NULL CHECK (version ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$'),
    state           text        NOT NULL DEFAULT 'pending'
                                CHECK (state IN ('pending', 'ready', 'failed', 'deprecated')),
    blob_id         uuid        REFERENCES model_blobs (id) ON DELETE RESTRICT,
    local_path      text,       -- platform models served from a path on the replica
    sha256          text,
    facts           jsonb       NOT NULL DEFAULT '{}'::jsonb,
    evals           jsonb       NOT NULL DEFAULT '{}'::jsonb,
    description     text        NOT NULL DEFAULT '' CHECK (length(description) <= 2000),
    parent_id       uuid        REFERENCES model_versions (id) ON DELETE SET NULL,
    origin          text        NOT NULL DEFAULT 'uploaded'
                                CHECK (origin IN ('uploaded', 'converted', 'quantized', 'platform')),
    origin_details  jsonb       NOT NULL DEFAULT '{}'::jsonb,
    error           text,
    created_by      uuid        REFERENCES users (id) ON DELETE SET NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    published_at    timestamptz,
    deprecated_at   timestamptz,
    CONSTRAINT model_versions_org_name_version_key UNIQUE NULLS NOT DISTINCT (org_id, name, version),
    CHECK (blob_id IS NOT NULL OR local_path IS NOT NULL OR state IN ('pending', 'failed'))
);
CREATE INDEX model_versions_org_name_idx ON model_versions (org_id, name, created_at DESC);
CREATE INDEX model_versions_parent_idx ON model_versions (parent_id);

CREATE FUNCTION bitnet_model_version_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.state IN ('ready', 'deprecated') AND (
        NEW.blob_id IS DISTINCT FROM OLD.blob_id OR NEW.sha256 IS DISTINCT FROM OLD.sha256
        OR NEW.facts IS DISTINCT FROM OLD.facts OR NEW.parent_id IS DISTINCT FROM OLD.parent_id
        OR NEW.origin IS DISTINCT FROM OLD.origin OR NEW.origin_details IS DISTINCT FROM OLD.origin_details
        OR NEW.name IS DISTINCT FROM OLD.name OR NEW.version IS DISTINCT FROM OLD.version
        OR NEW.org_id IS DISTINCT FROM OLD.org_id OR NEW.state NOT IN ('ready', 'deprecated')
        OR (NEW.local_path IS DISTINCT FROM OLD.local_path AND OLD.origin <> 'platform')
    ) THEN
        RAISE EXCEPTION 'model version %:% is published and cannot change', OLD.name, OLD.version
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER model_versions_immutable BEFORE UPDATE ON model_versions
    FOR EACH ROW EXECUTE FUNCTION bitnet_model_version_immutable();

-- Movable names for a version (`latest` moved by the registry on publish; others by users).
CREATE TABLE model_aliases (
    org_id      uuid        REFERENCES organizations (id) ON DELETE CASCADE,
    name        text        NOT NULL,
    alias       text        NOT NULL CHECK (alias ~ '^[a-z][a-z0-9._-]{0,63}$'),
    version_id  uuid        NOT NULL REFERENCES model_versions (id) ON DELETE CASCADE,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT model_aliases_key UNIQUE NULLS NOT DISTINCT (org_id, name, alias)
);

-- Resumable uploads: each PUT of a byte range is stored as a part object, so any replica can take the next
-- one; completing concatenates them into a blob.
CREATE TABLE model_uploads (
    id              uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    org_id          uuid        NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    created_by      uuid        REFERENCES users (id) ON DELETE SET NULL,
    total_bytes     bigint      CHECK (total_bytes >= 0),
    received_bytes  bigint      NOT NULL DEFAULT 0 CHECK (received_bytes >= 0),
    state           text        NOT NULL DEFAULT 'open' CHECK (state IN ('open', 'completing', 'completed', 'aborted')),
    version_id      uuid        REFERENCES model_versions (id) ON DELETE SET NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz NOT NULL DEFAULT now() + interval '7 days'
);
CREATE TABLE model_upload_parts (
    upload_id   uuid        NOT NULL REFERENCES model_uploads (id) ON DELETE CASCADE,
    org_id      uuid        NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    start_byte  bigint      NOT NULL CHECK (start_byte >= 0),
    bytes       bigint      NOT NULL CHECK (bytes > 0),
    object_key  text        NOT NULL,
    PRIMARY KEY (upload_id, start_byte)
);

-- Conversion jobs (the job worker of actors/jobs.py consumes their ids from a Redis stream).
CREATE TABLE model_jobs (
    id                uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    org_id            uuid        NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    kind              text        NOT NULL CHECK (kind IN ('convert', 'quantize')),
    source_version_id uuid        REFERENCES model_versions (id) ON DELETE SET NULL,
    target            text        NOT NULL CHECK (target IN ('hf-ternary', 'tq1_0', 'tq2_0', 'i2_s')),
    output_name       text        NOT NULL,
    output_version    text        NOT NULL,
    state             text        NOT NULL DEFAULT 'queued'
                                  CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    attempts          integer     NOT NULL DEFAULT 0,
    progress          jsonb       NOT NULL DEFAULT '{}'::jsonb,
    error             text,
    result_version_id uuid        REFERENCES model_versions (id) ON DELETE SET NULL,
    cancel_requested  boolean     NOT NULL DEFAULT false,
    created_by        uuid        REFERENCES users (id) ON DELETE SET NULL,
    created_at        timestamptz NOT NULL DEFAULT now(),
    started_at        timestamptz,
    finished_at       timestamptz
);
CREATE INDEX model_jobs_org_idx ON model_jobs (org_id, created_at DESC);

-- A/B routes: a public name split over versions by weight (sticky per key or user).
CREATE TABLE model_routes (
    org_id       uuid        NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    public_name  text        NOT NULL CHECK (public_name ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$'),
    targets      jsonb       NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (org_id, public_name)
);

-- The platform models of `models` carry over as platform versions.
INSERT INTO model_versions (org_id, name, version, state, local_path, origin, facts, published_at, created_at)
SELECT org_id, name, version, 'ready', file_path, CASE WHEN org_id IS NULL THEN 'platform' ELSE 'uploaded' END,
       metadata, created_at, created_at
FROM models;
DROP TABLE models;

-- Row-level security: own rows, plus platform rows for reading.
DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['model_blobs', 'model_versions', 'model_aliases'] LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format('CREATE POLICY tenant_read ON %I FOR SELECT TO bitnet_app'
                       ' USING (org_id = bitnet_current_org() OR org_id IS NULL)', t);
        EXECUTE format('CREATE POLICY tenant_write ON %I FOR INSERT TO bitnet_app'
                       ' WITH CHECK (org_id = bitnet_current_org())', t);
        EXECUTE format('CREATE POLICY tenant_update ON %I FOR UPDATE TO bitnet_app'
                       ' USING (org_id = bitnet_current_org()) WITH CHECK (org_id = bitnet_current_org())', t);
        EXECUTE format('CREATE POLICY tenant_delete ON %I FOR DELETE TO bitnet_app'
                       ' USING (org_id = bitnet_current_org())', t);
    END LOOP;
    FOREACH t IN ARRAY ARRAY['model_uploads', 'model_upload_parts', 'model_jobs', 'model_routes'] LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format('CREATE POLICY tenant ON %I TO bitnet_app USING (org_id = bitnet_current_org())'
                       ' WITH CHECK (org_id = bitnet_current_org())', t);
    END LOOP;
    FOREACH t IN ARRAY ARRAY['model_blobs', 'model_versions', 'model_aliases', 'model_uploads',
                             'model_upload_parts', 'model_jobs', 'model_routes'] LOOP
        EXECUTE format('CREATE POLICY owner_all ON %I TO %I USING (true) WITH CHECK (true)', t, current_user);
    END LOOP;
END
$$;

-- Whether any organization's blob or upload part still uses an object (objects are content-addressed, so
-- several rows may share one): an object is deleted only when this is false. Says nothing else across
-- tenants.
CREATE FUNCTION bitnet_object_in_use(p_key text) RETURNS boolean
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT EXISTS (SELECT 1 FROM model_blobs WHERE object_key = p_key)
        OR EXISTS (SELECT 1 FROM model_upload_parts WHERE object_key = p_key)
$$;

-- An organization's home region: the replicas of that region (BITNET_REGION) serve its inference and take
-- its model writes; the others answer 421 naming the right region. Set at creation to the creating
-- replica's region; moved only by an operator (`bitnet-actor admin set-region`).
ALTER TABLE organizations ADD COLUMN region text NOT NULL DEFAULT 'default'
    CHECK (region ~ '^[a-z0-9][a-z0-9_-]{0,63}$');

-- The largest model file a plan may upload.
ALTER TABLE plans ADD COLUMN max_upload_bytes bigint CHECK (max_upload_bytes >= 0);
UPDATE plans SET max_upload_bytes = CASE name WHEN 'free' THEN 2147483648 WHEN 'pro' THEN 34359738368
                                              ELSE 274877906944 END;
REVOKE ALL ON FUNCTION bitnet_object_in_use(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION bitnet_object_in_use(text) TO bitnet_app;

GRANT SELECT, INSERT, UPDATE, DELETE ON model_blobs, model_versions, model_aliases, model_uploads,
    model_upload_parts, model_jobs, model_routes TO bitnet_app;
