-- 0002_api_keys: API keys for the HTTP API. See spec/http-api.md
-- "Security and limits" and engine/api/auth.h.
--
-- A key is shown once, as sk_<id>_<secret>; only its public id and
-- hash = hex(sha256(salt || secret)) (salt and secret as lowercase hex text)
-- are kept. A revoked key keeps its row (revoked_at set) so listings and
-- audits still name it.
CREATE TABLE api_keys (
    id          text        PRIMARY KEY CHECK (id ~ '^[0-9a-f]{12}$'),
    name        text        NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    hash        text        NOT NULL CHECK (hash ~ '^[0-9a-f]{64}$'),
    salt        text        NOT NULL CHECK (salt ~ '^[0-9a-f]{32}$'),
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);
