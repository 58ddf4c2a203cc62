CREATE TABLE events (
    id        bigserial PRIMARY KEY,
    name      text NOT NULL CHECK (char_length(name) BETWEEN 1 AND 200),
    starts_at timestamptz NOT NULL DEFAULT now(),
    location  geography(Point, 4326) NOT NULL,
    embedding vector(3) NOT NULL
);

-- /events/near: ST_DWithin on geography.
CREATE INDEX events_location_gist ON events USING gist (location);
-- /events/similar: L2 nearest neighbours (<->).
CREATE INDEX events_embedding_hnsw ON events USING hnsw (embedding vector_l2_ops);
-- /events/search: trigram similarity on the name.
CREATE INDEX events_name_trgm ON events USING gin (name gin_trgm_ops);
