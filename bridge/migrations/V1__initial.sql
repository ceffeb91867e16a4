-- The bridge's tables. Times are timestamptz (UTC instants), positions WGS84 degrees, money
-- cents. Every message a taxi sends is stored once, keyed by taxi, topic and seq.

-- Position fixes, partitioned by the day (UTC) of the device time. The store creates day
-- partitions named positions_YYYYMMDD ahead of time and on demand, and drops them after the
-- retention period once they are archived. There is deliberately no default partition.
-- A resent message is byte-identical, so (taxi_id, ts, seq) identifies it like (taxi_id, seq);
-- PostgreSQL needs the partition key in the primary key.
CREATE TABLE positions (
    taxi_id     text             NOT NULL,
    seq         bigint           NOT NULL,
    ts          timestamptz      NOT NULL,
    lat         double precision NOT NULL,
    lon         double precision NOT NULL,
    speed_kmh   real,
    heading_deg real,
    accuracy_m  real,
    received_at timestamptz      NOT NULL,
    PRIMARY KEY (taxi_id, ts, seq)
) PARTITION BY RANGE (ts);

-- The newest fix (by device time, then seq) of each taxi.
CREATE TABLE latest_positions (
    taxi_id     text             PRIMARY KEY,
    seq         bigint           NOT NULL,
    ts          timestamptz      NOT NULL,
    lat         double precision NOT NULL,
    lon         double precision NOT NULL,
    speed_kmh   real,
    heading_deg real,
    accuracy_m  real,
    received_at timestamptz      NOT NULL
) WITH (fillfactor = 70);

CREATE TABLE tour_events (
    taxi_id     text             NOT NULL,
    seq         bigint           NOT NULL,
    tour_id     text             NOT NULL,
    kind        text             NOT NULL CHECK (kind IN ('started', 'ended')),
    ts          timestamptz      NOT NULL,
    lat         double precision NOT NULL,
    lon         double precision NOT NULL,
    meter_cents bigint,
    received_at timestamptz      NOT NULL,
    PRIMARY KEY (taxi_id, seq)
);

-- One row per tour, from its events: `started` sets started_*, `ended` sets ended_* and the
-- final meter reading.
CREATE TABLE tours (
    taxi_id     text NOT NULL,
    tour_id     text NOT NULL,
    started_at  timestamptz,
    start_lat   double precision,
    start_lon   double precision,
    ended_at    timestamptz,
    end_lat     double precision,
    end_lon     double precision,
    meter_cents bigint,
    PRIMARY KEY (taxi_id, tour_id)
);

-- Taxis' answers to inbox messages.
CREATE TABLE acks (
    taxi_id     text        NOT NULL,
    seq         bigint      NOT NULL,
    order_id    text        NOT NULL,
    state       text        NOT NULL CHECK (state IN ('received', 'accepted', 'rejected')),
    ts          timestamptz NOT NULL,
    reason      text,
    received_at timestamptz NOT NULL,
    PRIMARY KEY (taxi_id, seq)
);

CREATE INDEX acks_order_id_idx ON acks (order_id);

-- Each taxi's latest connection state (by `at`).
CREATE TABLE taxi_status (
    taxi_id     text        PRIMARY KEY,
    state       text        NOT NULL CHECK (state IN ('online', 'offline')),
    at          timestamptz NOT NULL,
    received_at timestamptz NOT NULL
);

-- Messages refused by validation, with the payload byte for byte.
CREATE TABLE dead_letters (
    id          bigserial   PRIMARY KEY,
    received_at timestamptz NOT NULL,
    topic       text        NOT NULL,
    taxi_id     text,
    reason_code text        NOT NULL,
    reason      text        NOT NULL,
    payload     bytea       NOT NULL
);

CREATE INDEX dead_letters_received_at_idx ON dead_letters (received_at);

-- Per bridge: everything it received up to safe_until (its receive clock) is in the archive.
CREATE TABLE archive_watermarks (
    bridge_id  text        PRIMARY KEY,
    safe_until timestamptz NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
