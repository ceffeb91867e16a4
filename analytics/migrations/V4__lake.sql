-- V4__lake: what the lake export has published, per dataset and local day. The lake itself
-- (Parquet objects in S3) is the truth; this table tells operators and the scheduler which
-- days were exported, when, and how big they were.
CREATE TABLE lake_exports (
    dataset     text        NOT NULL,
    -- The local day (the lake's dt= partition, in the configured time zone).
    day         date        NOT NULL,
    -- Rows published; 0: the day had no rows and its object was removed.
    rows        bigint      NOT NULL,
    -- Size of the published object in bytes.
    bytes       bigint      NOT NULL,
    exported_at timestamptz NOT NULL,
    PRIMARY KEY (dataset, day)
);
