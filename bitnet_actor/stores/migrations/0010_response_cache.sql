-- 0010: the response cache (bitnet_actor/services/response_cache.py), opt-in per organization.
--
-- response_cache_ttl_s: how long a deterministic completion (temperature 0 or a fixed seed) stays in Redis for
-- identical requests of the same organization to the same model version; NULL (the default): the cache is off.
-- Set by owners and admins (PATCH /api/v1/orgs/{org}) and operators (bitnet-actor admin set-limits).

ALTER TABLE org_billing ADD COLUMN response_cache_ttl_s integer
    CHECK (response_cache_ttl_s BETWEEN 1 AND 604800);
