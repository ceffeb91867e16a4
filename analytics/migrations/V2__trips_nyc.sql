-- V2__trips_nyc: the import of historical NYC TLC trip records (analytics/src/import).
-- The trips themselves are in the lake (trips_nyc); PostgreSQL keeps which files were
-- imported and every row that was rejected, with its reason.

-- One row per imported file, written once all its days are published in the lake: a file
-- listed here is never imported again.
CREATE TABLE nyc_imports (
    -- Lowercase hex SHA-256 of the file's bytes (the lake's source_file).
    sha256      text PRIMARY KEY,
    -- Path as given when imported.
    path        text NOT NULL,
    -- csv, csv.gz or parquet.
    format      text NOT NULL,
    -- coordinates (2015 to mid-2016) or zone-ids (mid-2016 on).
    layout      text NOT NULL,
    bytes       bigint NOT NULL,
    -- Rows written to the lake.
    rows        bigint NOT NULL,
    -- Rows rejected (in nyc_import_rejects).
    rejected    bigint NOT NULL,
    -- New York days of pickup written (null: no row was accepted).
    first_day   date,
    last_day    date,
    days        date[] NOT NULL,
    imported_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX nyc_imports_imported_at ON nyc_imports (imported_at);

-- Every rejected row: counted, kept with its reason, never aborting the file.
CREATE TABLE nyc_import_rejects (
    file_sha256 text NOT NULL,
    -- CSV: the line the row starts on (the header is line 1). Parquet: the row number, from 1.
    line        bigint NOT NULL,
    -- unknown_row_layout, unparseable, dropoff_before_pickup, negative_distance,
    -- negative_fare, coordinates_out_of_range.
    reason      text NOT NULL,
    -- What was wrong, naming the column.
    detail      text NOT NULL,
    -- The row as text (CSV fields, or column=value pairs for Parquet).
    raw         text NOT NULL,
    PRIMARY KEY (file_sha256, line)
);
