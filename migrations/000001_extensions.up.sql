-- Extensions the events server needs: geography types (PostGIS), vectors
-- (pgvector, named "vector") and trigram matching (pg_trgm).
CREATE EXTENSION IF NOT EXISTS postgis;
CREATE EXTENSION IF NOT EXISTS vector;
CREATE EXTENSION IF NOT EXISTS pg_trgm;
