-- 0004: billing. Plans (table-driven, seeded here), per-organization and per-key overrides, the usage
-- ledger (append-only usage_events partitioned by month, with per-bucket rollups written only by the usage
-- meter's batches), invoices, the outbox of Stripe meter events and the Stripe webhook events seen.
--
-- The ledger replaces inference_requests and usage_records: their rows are carried into usage_events below
-- and the old tables dropped.
--
-- Money: prices are cents per 1M tokens (numeric, up to 4 decimals); amounts are integer cents. Every
-- time bucket is in UTC.

-- Plans ---------------------------------------------------------------------------------------------------

CREATE TABLE plans (
    name                text        PRIMARY KEY CHECK (name ~ '^[a-z0-9][a-z0-9_-]{0,62}$'),
    display_name        text        NOT NULL CHECK (length(display_name) BETWEEN 1 AND 100),
    -- Per organization, per minute (NULL: unlimited).
    rpm                 integer     CHECK (rpm >= 0 AND rpm <= 100000000),
    tpm                 bigint      CHECK (tpm >= 0 AND tpm <= 100000000000),
    -- Per API key (NULL: only the organization's limits apply).
    key_rpm             integer     CHECK (key_rpm >= 0 AND key_rpm <= 100000000),
    key_tpm             bigint      CHECK (key_tpm >= 0 AND key_tpm <= 100000000000),
    key_concurrency     integer     CHECK (key_concurrency >= 0 AND key_concurrency <= 100000),
    -- Tokens (input + output) per calendar month (UTC); NULL: no quota.
    monthly_token_quota bigint      CHECK (monthly_token_quota >= 0),
    quota_mode          text        NOT NULL DEFAULT 'hard' CHECK (quota_mode IN ('hard', 'overage')),
    input_price_per_m   numeric(14, 4) NOT NULL DEFAULT 0 CHECK (input_price_per_m >= 0 AND input_price_per_m <= 100000000),
    output_price_per_m  numeric(14, 4) NOT NULL DEFAULT 0 CHECK (output_price_per_m >= 0 AND output_price_per_m <= 100000000),
    monthly_fee_cents   bigint      NOT NULL DEFAULT 0 CHECK (monthly_fee_cents >= 0 AND monthly_fee_cents <= 100000000000),
    -- The scheduler's share: requests admitted per round-robin turn, and running sequences at most.
    weight              integer     NOT NULL DEFAULT 1 CHECK (weight BETWEEN 1 AND 100),
    max_running         integer     NOT NULL DEFAULT 4 CHECK (max_running BETWEEN 1 AND 4096),
    stripe_price_id     text,
    custom              boolean     NOT NULL DEFAULT true,
    created_at          timestamptz NOT NULL DEFAULT now()
);

-- A model's own price on a plan (else the plan's default price).
CREATE TABLE plan_model_prices (
    plan               text        NOT NULL REFERENCES plans (name) ON DELETE CASCADE,
    model              text        NOT NULL CHECK (length(model) BETWEEN 1 AND 200),
    input_price_per_m  numeric(14, 4) NOT NULL CHECK (input_price_per_m >= 0 AND input_price_per_m <= 100000000),
    output_price_per_m numeric(14, 4) NOT NULL CHECK (output_price_per_m >= 0 AND output_price_per_m <= 100000000),
    PRIMARY KEY (plan, model)
);

INSERT INTO plans (name, display_name, rpm, tpm, key_rpm, key_tpm, key_concurrency, monthly_token_quota,
                   quota_mode, input_price_per_m, output_price_per_m, monthly_fee_cents, weight, max_running, custom)
VALUES
    ('free', 'Free', 60, 100000, NULL, NULL, 4, 2000000, 'hard', 0, 0, 0, 1, 4, false),
    ('pro', 'Pro', 1200, 2000000, NULL, NULL, 16, 200000000, 'overage', 10, 40, 2000, 2, 8, false),
    ('enterprise', 'Enterprise', 12000, 20000000, NULL, NULL, 64, NULL, 'overage', 8, 32, 0, 4, 16, false);

UPDATE organizations SET plan = 'free' WHERE plan NOT IN (SELECT name FROM plans);
ALTER TABLE organizations ADD CONSTRAINT organizations_plan_fkey FOREIGN KEY (plan) REFERENCES plans (name);

-- An organization's overrides of its plan and its Stripe side. One row per organization, created on need.
CREATE TABLE org_billing (
    org_id                 uuid        PRIMARY KEY REFERENCES organizations (id) ON DELETE CASCADE,
    rpm                    integer     CHECK (rpm >= 0 AND rpm <= 100000000),
    tpm                    bigint      CHECK (tpm >= 0 AND tpm <= 100000000000),
    key_rpm                integer     CHECK (key_rpm >= 0 AND key_rpm <= 100000000),
    key_tpm                bigint      CHECK (key_tpm >= 0 AND key_tpm <= 100000000000),
    key_concurrency        integer     CHECK (key_concurrency >= 0 AND key_concurrency <= 100000),
    monthly_token_quota    bigint      CHECK (monthly_token_quota >= 0),
    quota_mode             text        CHECK (quota_mode IN ('hard', 'overage')),
    stripe_customer_id     text        UNIQUE,
    stripe_subscription_id text,
    subscription_status    text,
    -- The Stripe event time of the last subscription change applied (older events are ignored).
    subscription_event_at  timestamptz,
    -- invoice.payment_failed: the plan drops to free at grace_until unless a payment succeeds first.
    payment_failed_at      timestamptz,
    grace_until            timestamptz,
    updated_at             timestamptz NOT NULL DEFAULT now()
);

-- Per-key overrides (NULL: the plan's or the organization's).
ALTER TABLE api_keys
    ADD COLUMN rpm             integer CHECK (rpm >= 0 AND rpm <= 100000000),
    ADD COLUMN tpm             bigint  CHECK (tpm >= 0 AND tpm <= 100000000000),
    ADD COLUMN max_concurrency integer CHECK (max_concurrency >= 0 AND max_concurrency <= 100000);

DROP FUNCTION bitnet_api_key_by_hash(bytea);
CREATE FUNCTION bitnet_api_key_by_hash(p_hash bytea)
RETURNS TABLE (id uuid, org_id uuid, name text, scopes text[], expires_at timestamptz, revoked_at timestamptz,
               rpm integer, tpm bigint, max_concurrency integer)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT k.id, k.org_id, k.name, k.scopes, k.expires_at, k.revoked_at, k.rpm, k.tpm, k.max_concurrency
    FROM api_keys k WHERE k.key_hash = p_hash
$$;

-- The ledger ----------------------------------------------------------------------------------------------

-- One row per request, however it ended; never updated or deleted. request_id is the idempotency key;
-- created_at travels with the event (spill files included), so (request_id, created_at) identifies it.
CREATE TABLE usage_events (
    request_id    text        NOT NULL CHECK (length(request_id) BETWEEN 1 AND 200),
    created_at    timestamptz NOT NULL,
    org_id        uuid        NOT NULL REFERENCES organizations (id) ON DELETE RESTRICT,
    api_key_id    uuid,
    user_id       uuid,
    model         text        NOT NULL CHECK (length(model) BETWEEN 1 AND 300),
    model_version text        NOT NULL DEFAULT '',
    endpoint      text        NOT NULL DEFAULT '',
    input_tokens  bigint      NOT NULL CHECK (input_tokens >= 0),
    output_tokens bigint      NOT NULL CHECK (output_tokens >= 0),
    cached_tokens bigint      NOT NULL DEFAULT 0 CHECK (cached_tokens >= 0),
    latency_ms    integer     NOT NULL CHECK (latency_ms >= 0),
    ttft_ms       integer     CHECK (ttft_ms >= 0),
    finish_reason text,
    outcome       text        NOT NULL,
    request_data  jsonb       NOT NULL DEFAULT '{}'::jsonb,
    PRIMARY KEY (request_id, created_at)
) PARTITION BY RANGE (created_at);
CREATE TABLE usage_events_default PARTITION OF usage_events DEFAULT;
CREATE INDEX usage_events_org_id_created_idx ON usage_events (org_id, created_at);

-- Sums per organization x key x model x bucket (1m, 1h, 1d), written only by the meter's batch inserts
-- (one upsert per bucket row per batch), never on a request's path.
CREATE TABLE usage_rollups (
    org_id        uuid        NOT NULL REFERENCES organizations (id) ON DELETE RESTRICT,
    width         text        NOT NULL CHECK (width IN ('1m', '1h', '1d')),
    bucket_start  timestamptz NOT NULL,
    api_key_id    uuid,
    model         text        NOT NULL,
    requests      bigint      NOT NULL DEFAULT 0,
    input_tokens  bigint      NOT NULL DEFAULT 0,
    output_tokens bigint      NOT NULL DEFAULT 0,
    cached_tokens bigint      NOT NULL DEFAULT 0,
    errors        bigint      NOT NULL DEFAULT 0,
    CONSTRAINT usage_rollups_bucket_key UNIQUE NULLS NOT DISTINCT (org_id, width, bucket_start, api_key_id, model)
);
CREATE INDEX usage_rollups_org_width_start_idx ON usage_rollups (org_id, width, bucket_start);

-- Meter events for Stripe, written in the same transaction as the usage they count. An 'open' row per
-- organization x meter x hour collects usage; the outbox actor freezes it ('sending', identifier set) once
-- its hour is over, sends it (retrying with the same identifier) and marks it 'sent'. Usage arriving for a
-- frozen hour opens a new row with a new identifier, so nothing is counted twice or lost. Internal to the
-- service (no tenant reads it), so no row-level security.
CREATE TABLE billing_outbox (
    id              bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    org_id          uuid        NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    meter           text        NOT NULL CHECK (meter IN ('input_tokens', 'output_tokens')),
    bucket_start    timestamptz NOT NULL,
    value           bigint      NOT NULL CHECK (value >= 0),
    state           text        NOT NULL DEFAULT 'open' CHECK (state IN ('open', 'sending', 'sent', 'skipped')),
    identifier      text        UNIQUE,
    attempts        integer     NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    sent_at         timestamptz
);
CREATE UNIQUE INDEX billing_outbox_open_key ON billing_outbox (org_id, meter, bucket_start) WHERE state = 'open';
CREATE INDEX billing_outbox_due_idx ON billing_outbox (next_attempt_at) WHERE state IN ('open', 'sending');

-- Write a batch of usage events (a JSON array of objects with usage_events' columns): the events, their
-- rollups and, when p_outbox, their meter events. Events already recorded are skipped and counted nowhere.
-- Returns how many events were new. Runs as the owner: one batch spans organizations. Every insert takes
-- its rows in the order of its conflict key, so two replicas' concurrent batches over the same buckets
-- lock them in the same order and wait for each other, never deadlock.
CREATE FUNCTION bitnet_record_usage(p_events jsonb, p_outbox boolean DEFAULT true) RETURNS integer
LANGUAGE sql SECURITY DEFINER SET search_path = public, pg_temp SET TimeZone = 'UTC' AS $$
    WITH ins AS (
        INSERT INTO usage_events (request_id, created_at, org_id, api_key_id, user_id, model, model_version,
                                  endpoint, input_tokens, output_tokens, cached_tokens, latency_ms, ttft_ms,
                                  finish_reason, outcome, request_data)
        SELECT e.request_id, e.created_at, e.org_id, e.api_key_id, e.user_id, e.model, coalesce(e.model_version, ''),
               coalesce(e.endpoint, ''), e.input_tokens, e.output_tokens, coalesce(e.cached_tokens, 0),
               e.latency_ms, e.ttft_ms, e.finish_reason, e.outcome, coalesce(e.request_data, '{}'::jsonb)
        FROM jsonb_to_recordset(p_events) AS e(
            request_id text, created_at timestamptz, org_id uuid, api_key_id uuid, user_id uuid, model text,
            model_version text, endpoint text, input_tokens bigint, output_tokens bigint, cached_tokens bigint,
            latency_ms integer, ttft_ms integer, finish_reason text, outcome text, request_data jsonb)
        ORDER BY e.request_id, e.created_at
        ON CONFLICT (request_id, created_at) DO NOTHING
        RETURNING org_id, created_at, api_key_id, model, input_tokens, output_tokens, cached_tokens, outcome
    ),
    rolled AS (
        INSERT INTO usage_rollups AS r (org_id, width, bucket_start, api_key_id, model, requests, input_tokens,
                                        output_tokens, cached_tokens, errors)
        SELECT n.org_id, w.width, date_trunc(w.unit, n.created_at), n.api_key_id, n.model, count(*),
               sum(n.input_tokens), sum(n.output_tokens), sum(n.cached_tokens),
               count(*) FILTER (WHERE n.outcome IN ('failed', 'error', 'timeout'))
        FROM ins n CROSS JOIN (VALUES ('1m', 'minute'), ('1h', 'hour'), ('1d', 'day')) AS w(width, unit)
        GROUP BY n.org_id, w.width, date_trunc(w.unit, n.created_at), n.api_key_id, n.model
        ORDER BY n.org_id, w.width, date_trunc(w.unit, n.created_at), n.api_key_id, n.model
        ON CONFLICT ON CONSTRAINT usage_rollups_bucket_key DO UPDATE SET
            requests = r.requests + excluded.requests,
            input_tokens = r.input_tokens + excluded.input_tokens,
            output_tokens = r.output_tokens + excluded.output_tokens,
            cached_tokens = r.cached_tokens + excluded.cached_tokens,
            errors = r.errors + excluded.errors
        RETURNING 1
    ),
    metered AS (
        INSERT INTO billing_outbox AS b (org_id, meter, bucket_start, value)
        SELECT n.org_id, m.meter, date_trunc('hour', n.created_at),
               sum(CASE m.meter WHEN 'input_tokens' THEN n.input_tokens ELSE n.output_tokens END)
        FROM ins n CROSS JOIN (VALUES ('input_tokens'), ('output_tokens')) AS m(meter)
        WHERE p_outbox
        GROUP BY n.org_id, m.meter, date_trunc('hour', n.created_at)
        HAVING sum(CASE m.meter WHEN 'input_tokens' THEN n.input_tokens ELSE n.output_tokens END) > 0
        ORDER BY n.org_id, m.meter, date_trunc('hour', n.created_at)
        ON CONFLICT (org_id, meter, bucket_start) WHERE state = 'open' DO UPDATE SET value = b.value + excluded.value
        RETURNING 1
    )
    SELECT count(*)::integer FROM ins
$$;

-- The old per-request table and counter, carried into the ledger (their usage was reported nowhere, so
-- no meter events for it).
SELECT bitnet_record_usage(coalesce(jsonb_agg(jsonb_build_object(
    'request_id', coalesce(r.request_data ->> 'request_id', r.id::text),
    'created_at', r.created_at,
    'org_id', r.org_id,
    'api_key_id', CASE WHEN r.request_data ->> 'api_key_id' ~ '^[0-9a-f-]{36}$'
                       THEN r.request_data ->> 'api_key_id' END,
    'model', coalesce(m.name, 'unknown'),
    'model_version', coalesce(m.version, ''),
    'endpoint', coalesce(r.request_data ->> 'endpoint', ''),
    'input_tokens', coalesce((r.response_data -> 'usage' ->> 'prompt_tokens')::bigint, 0),
    'output_tokens', coalesce((r.response_data -> 'usage' ->> 'completion_tokens')::bigint, 0),
    'latency_ms', coalesce(r.latency_ms, 0),
    'outcome', coalesce(r.response_data ->> 'outcome', 'ok'),
    'request_data', r.request_data)), '[]'::jsonb), false)
FROM inference_requests r LEFT JOIN models m ON m.id = r.model_id;

DROP TABLE inference_requests;
DROP TABLE usage_records;

-- Invoices ------------------------------------------------------------------------------------------------

-- One invoice per organization and month, computed from the ledger. A finalized invoice and its lines
-- never change (a trigger refuses it).
CREATE TABLE invoices (
    id                uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    org_id            uuid        NOT NULL REFERENCES organizations (id) ON DELETE RESTRICT,
    period            date        NOT NULL CHECK (extract(day FROM period) = 1),
    plan              text        NOT NULL,
    status            text        NOT NULL DEFAULT 'draft' CHECK (status IN ('draft', 'finalized')),
    currency          text        NOT NULL DEFAULT 'usd',
    subtotal_cents    bigint      NOT NULL DEFAULT 0 CHECK (subtotal_cents >= 0),
    total_cents       bigint      NOT NULL DEFAULT 0 CHECK (total_cents >= 0),
    input_tokens      bigint      NOT NULL DEFAULT 0,
    output_tokens     bigint      NOT NULL DEFAULT 0,
    requests          bigint      NOT NULL DEFAULT 0,
    stripe_invoice_id text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    finalized_at      timestamptz,
    UNIQUE (org_id, period),
    CHECK ((status = 'finalized') = (finalized_at IS NOT NULL))
);

CREATE TABLE invoice_lines (
    invoice_id      uuid        NOT NULL REFERENCES invoices (id) ON DELETE CASCADE,
    line_no         integer     NOT NULL CHECK (line_no >= 1),
    org_id          uuid        NOT NULL REFERENCES organizations (id) ON DELETE RESTRICT,
    kind            text        NOT NULL CHECK (kind IN ('input_tokens', 'output_tokens', 'base_fee')),
    model           text        NOT NULL DEFAULT '',
    description     text        NOT NULL,
    quantity        bigint      NOT NULL CHECK (quantity >= 0),
    unit_price_per_m numeric(14, 4) NOT NULL DEFAULT 0,
    amount_cents    bigint      NOT NULL CHECK (amount_cents >= 0),
    PRIMARY KEY (invoice_id, line_no)
);

CREATE FUNCTION bitnet_invoice_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    inv uuid;
BEGIN
    IF TG_TABLE_NAME = 'invoices' THEN
        IF OLD.status = 'finalized' THEN
            RAISE EXCEPTION 'invoice % is finalized and cannot change', OLD.id USING ERRCODE = 'check_violation';
        END IF;
    ELSE
        inv := CASE WHEN TG_OP = 'INSERT' THEN NEW.invoice_id ELSE OLD.invoice_id END;
        IF EXISTS (SELECT 1 FROM invoices WHERE id = inv AND status = 'finalized') THEN
            RAISE EXCEPTION 'invoice % is finalized and cannot change', inv USING ERRCODE = 'check_violation';
        END IF;
    END IF;
    RETURN CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
END;
$$;
CREATE TRIGGER invoices_immutable BEFORE UPDATE OR DELETE ON invoices
    FOR EACH ROW EXECUTE FUNCTION bitnet_invoice_immutable();
CREATE TRIGGER invoice_lines_immutable BEFORE INSERT OR UPDATE OR DELETE ON invoice_lines
    FOR EACH ROW EXECUTE FUNCTION bitnet_invoice_immutable();

-- Stripe webhook events, each processed once (by id). Internal: no row-level security.
CREATE TABLE stripe_events (
    id           text        PRIMARY KEY,
    type         text        NOT NULL,
    created      timestamptz NOT NULL,
    org_id       uuid        REFERENCES organizations (id) ON DELETE SET NULL,
    received_at  timestamptz NOT NULL DEFAULT now()
);

-- Row-level security ---------------------------------------------------------------------------------------

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['org_billing', 'usage_events', 'usage_rollups', 'invoices', 'invoice_lines'] LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format('CREATE POLICY tenant ON %I TO bitnet_app USING (org_id = bitnet_current_org())', t);
        EXECUTE format('CREATE POLICY owner_all ON %I TO %I USING (true) WITH CHECK (true)', t, current_user);
    END LOOP;
END
$$;

-- The organization whose Stripe customer is p_customer (webhooks arrive before the tenant is known).
CREATE FUNCTION bitnet_org_by_stripe_customer(p_customer text) RETURNS uuid
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT org_id FROM org_billing WHERE stripe_customer_id = p_customer
$$;

-- Organizations whose payment grace period is over (the service drops them to the free plan).
CREATE FUNCTION bitnet_orgs_past_grace() RETURNS SETOF uuid
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT org_id FROM org_billing WHERE grace_until IS NOT NULL AND grace_until <= now()
$$;

GRANT SELECT ON plans, plan_model_prices TO bitnet_app;
GRANT SELECT, INSERT, UPDATE ON org_billing TO bitnet_app;
GRANT SELECT ON usage_events, usage_rollups TO bitnet_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON invoices, invoice_lines TO bitnet_app;
GRANT SELECT, INSERT, UPDATE ON billing_outbox, stripe_events TO bitnet_app;
REVOKE ALL ON FUNCTION bitnet_api_key_by_hash(bytea), bitnet_record_usage(jsonb, boolean),
    bitnet_org_by_stripe_customer(text), bitnet_orgs_past_grace() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION bitnet_api_key_by_hash(bytea), bitnet_record_usage(jsonb, boolean),
    bitnet_org_by_stripe_customer(text), bitnet_orgs_past_grace() TO bitnet_app;

SELECT bitnet_ensure_partitions('usage_events');
