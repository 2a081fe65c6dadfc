-- 0006: the data keys of encrypted model objects (bitnet_actor/services/models/keys.py).
--
-- Every stored model object is encrypted with its own AES-256 data key (DEK); the DEK is kept here only
-- wrapped (encrypted) by a master key named by key_id, which lives outside the database (BITNET_MASTER_KEYS
-- or a KMS). Rotation re-wraps wrapped_key under the current master key; the objects are not touched.
-- Crypto-shredding an organization sets wrapped_key to NULL and destroyed_at: its objects can then never be
-- decrypted again (the row stays as a tombstone so a read can say so). Deleting the organization deletes its
-- rows outright.
--
-- org_id NULL: a platform object (a model the platform serves to everyone): every organization may read its
-- data key, as with models; only a transaction acting for no organization may write one.

CREATE TABLE model_data_keys (
    id               uuid        PRIMARY KEY,  -- also bound into every chunk of the object
    org_id           uuid        REFERENCES organizations (id) ON DELETE CASCADE,
    object_key       text        NOT NULL UNIQUE CHECK (object_key ~ '^sha256/[0-9a-f]{64}$'),
    key_id           text        NOT NULL CHECK (length(key_id) BETWEEN 1 AND 200),
    wrapped_key      bytea       CHECK (length(wrapped_key) BETWEEN 16 AND 4096),
    plaintext_sha256 text        NOT NULL CHECK (plaintext_sha256 ~ '^[0-9a-f]{64}$'),
    plaintext_size   bigint      NOT NULL CHECK (plaintext_size >= 0),
    chunk_size       integer     NOT NULL CHECK (chunk_size > 0),
    created_at       timestamptz NOT NULL DEFAULT now(),
    rotated_at       timestamptz,
    destroyed_at     timestamptz,
    CHECK ((wrapped_key IS NULL) = (destroyed_at IS NOT NULL))
);
CREATE INDEX model_data_keys_org_id_idx ON model_data_keys (org_id);
-- Rotation walks the keys not yet under the current master key.
CREATE INDEX model_data_keys_key_id_idx ON model_data_keys (key_id) WHERE wrapped_key IS NOT NULL;
-- Dedup by content: an organization's objects with the same plaintext.
CREATE INDEX model_data_keys_plaintext_idx ON model_data_keys (org_id, plaintext_sha256);

ALTER TABLE model_data_keys ENABLE ROW LEVEL SECURITY;
ALTER TABLE model_data_keys FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_read ON model_data_keys FOR SELECT TO bitnet_app
    USING (org_id = bitnet_current_org() OR org_id IS NULL);
CREATE POLICY tenant_write ON model_data_keys FOR INSERT TO bitnet_app
    WITH CHECK (org_id = bitnet_current_org() OR (org_id IS NULL AND bitnet_current_org() IS NULL));
CREATE POLICY tenant_update ON model_data_keys FOR UPDATE TO bitnet_app
    USING (org_id = bitnet_current_org() OR (org_id IS NULL AND bitnet_current_org() IS NULL))
    WITH CHECK (org_id = bitnet_current_org() OR (org_id IS NULL AND bitnet_current_org() IS NULL));
CREATE POLICY tenant_delete ON model_data_keys FOR DELETE TO bitnet_app
    USING (org_id = bitnet_current_org() OR (org_id IS NULL AND bitnet_current_org() IS NULL));
-- The owner (admin commands: rotation across every organization) sees every row.
DO $$
BEGIN
    EXECUTE format('CREATE POLICY owner_all ON model_data_keys TO %I USING (true) WITH CHECK (true)', current_user);
END
$$;

GRANT SELECT, INSERT, UPDATE, DELETE ON model_data_keys TO bitnet_app;
