-- 0001: the core tables of the data model (ARCHITECTURE.md, "Data").
-- Every tenant-owned row carries its organization's id; later migrations add row-level security on it.

CREATE TABLE organizations (
    id          uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    name        text        NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    plan        text        NOT NULL DEFAULT 'free',
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX organizations_name_key ON organizations (lower(name));

CREATE TABLE users (
    id              uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    email           text        NOT NULL CHECK (position('@' IN email) > 1),
    organization_id uuid        REFERENCES organizations (id) ON DELETE SET NULL,
    role            text        NOT NULL DEFAULT 'member',
    created_at      timestamptz NOT NULL DEFAULT now()
);
-- Emails are unique whatever their case.
CREATE UNIQUE INDEX users_email_key ON users (lower(email));
CREATE INDEX users_organization_id_idx ON users (organization_id);

-- organization_id NULL: a platform-wide model every tenant may use.
CREATE TABLE models (
    id              uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id uuid        REFERENCES organizations (id) ON DELETE CASCADE,
    name            text        NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    version         text        NOT NULL DEFAULT '1',
    file_path       text        NOT NULL,
    metadata        jsonb       NOT NULL DEFAULT '{}'::jsonb,
    created_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT models_org_name_version_key UNIQUE NULLS NOT DISTINCT (organization_id, name, version)
);

-- One row per API call; the largest table, so it is partitioned by month (bitnet_ensure_partitions).
CREATE TABLE inference_requests (
    id              uuid        NOT NULL DEFAULT gen_random_uuid(),
    organization_id uuid        NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    model_id        uuid        REFERENCES models (id) ON DELETE SET NULL,
    request_data    jsonb       NOT NULL DEFAULT '{}'::jsonb,
    response_data   jsonb       NOT NULL DEFAULT '{}'::jsonb,
    latency_ms      integer     CHECK (latency_ms >= 0),
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (id, created_at)
) PARTITION BY RANGE (created_at);
CREATE TABLE inference_requests_default PARTITION OF inference_requests DEFAULT;
CREATE INDEX inference_requests_org_created_idx ON inference_requests (organization_id, created_at DESC);

-- The billing ledger: never deleted with its organization (RESTRICT).
CREATE TABLE usage_records (
    id              uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id uuid        NOT NULL REFERENCES organizations (id) ON DELETE RESTRICT,
    operation_count bigint      NOT NULL CHECK (operation_count >= 0),
    billing_period  date        NOT NULL,
    amount_cents    bigint      NOT NULL DEFAULT 0 CHECK (amount_cents >= 0),
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX usage_records_org_period_idx ON usage_records (organization_id, billing_period);

-- Create the monthly partitions of a RANGE (created_at) table from the current month to `months_ahead`
-- months after it. Idempotent; the service calls it at start and the migration once now.
CREATE FUNCTION bitnet_ensure_partitions(parent regclass, months_ahead integer DEFAULT 2)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    month_start date := date_trunc('month', now())::date;
    lo date;
    hi date;
    part text;
BEGIN
    FOR i IN 0..months_ahead LOOP
        lo := (month_start + make_interval(months => i))::date;
        hi := (lo + interval '1 month')::date;
        part := format('%s_%s', parent::text, to_char(lo, 'YYYY_MM'));
        IF to_regclass(part) IS NULL THEN
            EXECUTE format('CREATE TABLE %I PARTITION OF %s FOR VALUES FROM (%L) TO (%L)', part, parent, lo, hi);
        END IF;
    END LOOP;
END;
$$;

SELECT bitnet_ensure_partitions('inference_requests');
