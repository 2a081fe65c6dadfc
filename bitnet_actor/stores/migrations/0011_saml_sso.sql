-- 0011: SAML 2.0 single sign-on per organization (bitnet_actor/services/saml/).
--
-- saml_configs: one identity provider per organization, set by its owners and admins
-- (PUT /api/v1/orgs/{org}/sso/saml). The service provider side holds no key: it signs nothing and verifies the
-- IdP's signature with idp_certificates (PEM, one to four, so a rotation can overlap). email_attribute /
-- name_attribute name the assertion attributes (by Name or FriendlyName); NULL email_attribute: the NameID.
-- Members provisioned on their first login get default_role (never owner). allowed_email_domains empty: any.
--
-- saml_identities: which user a (IdP, NameID) of an organization signed in as before, so a changed email at
-- the IdP keeps its account. Transient NameIDs are never recorded.

CREATE TABLE saml_configs (
    org_id                uuid        PRIMARY KEY REFERENCES organizations (id) ON DELETE CASCADE,
    enabled               boolean     NOT NULL DEFAULT true,
    idp_entity_id         text        NOT NULL CHECK (length(idp_entity_id) BETWEEN 1 AND 1024),
    idp_sso_url           text        NOT NULL CHECK (idp_sso_url ~ '^https?://' AND length(idp_sso_url) <= 2048),
    idp_certificates      text[]      NOT NULL CHECK (cardinality(idp_certificates) BETWEEN 1 AND 4),
    email_attribute       text        CHECK (length(email_attribute) BETWEEN 1 AND 256),
    name_attribute        text        CHECK (length(name_attribute) BETWEEN 1 AND 256),
    allowed_email_domains text[]      NOT NULL DEFAULT '{}' CHECK (cardinality(allowed_email_domains) <= 50),
    default_role          text        NOT NULL DEFAULT 'member'
                                      CHECK (default_role IN ('admin', 'member', 'viewer', 'billing')),
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE saml_identities (
    org_id        uuid        NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    issuer        text        NOT NULL CHECK (length(issuer) BETWEEN 1 AND 1024),
    name_id       text        NOT NULL CHECK (length(name_id) BETWEEN 1 AND 1024),
    user_id       uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    email         text        NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_login_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (org_id, issuer, name_id)
);
CREATE INDEX saml_identities_user_id_idx ON saml_identities (user_id);

ALTER TABLE saml_configs ENABLE ROW LEVEL SECURITY;
ALTER TABLE saml_configs FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant ON saml_configs TO bitnet_app USING (org_id = bitnet_current_org());

ALTER TABLE saml_identities ENABLE ROW LEVEL SECURITY;
ALTER TABLE saml_identities FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant ON saml_identities TO bitnet_app USING (org_id = bitnet_current_org());

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['saml_configs', 'saml_identities'] LOOP
        EXECUTE format('CREATE POLICY owner_all ON %I TO %I USING (true) WITH CHECK (true)', t, current_user);
    END LOOP;
END
$$;

GRANT SELECT, INSERT, UPDATE, DELETE ON saml_configs, saml_identities TO bitnet_app;
