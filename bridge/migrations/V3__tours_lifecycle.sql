-- Tour lifecycle, fares and invoices.
--
-- The pipeline still stores every tour event once in tour_events. The tour processor then
-- judges each stored event exactly once, in device-time order per taxi and after a settle
-- delay, and records its verdict on the event itself: `applied` (it changed the tour),
-- `repeated` (the same event again with another seq: nothing to do) or `rejected` (broke the
-- lifecycle; a copy went to dead_letters with reason_code). Events stored before this
-- migration are judged again, which rebuilds `tours` under the new rules.
ALTER TABLE tour_events
    ADD COLUMN judged_at   timestamptz,
    ADD COLUMN outcome     text CHECK (outcome IN ('applied', 'repeated', 'rejected')),
    ADD COLUMN reason_code text;

-- What the processor still has to judge.
CREATE INDEX tour_events_unjudged_idx ON tour_events (taxi_id, ts, seq) WHERE judged_at IS NULL;

-- One row per tour, written only by the tour processor. A tour id names one tour of one taxi:
-- an event of another taxi for it is rejected.
DROP TABLE tours;
CREATE TABLE tours (
    tour_id           text             PRIMARY KEY,
    taxi_id           text             NOT NULL,
    state             text             NOT NULL CHECK (state IN ('started', 'ended')),
    started_seq       bigint           NOT NULL,
    started_at        timestamptz      NOT NULL,
    start_lat         double precision NOT NULL,
    start_lon         double precision NOT NULL,
    start_meter_cents bigint,
    ended_seq         bigint,
    ended_at          timestamptz,
    end_lat           double precision,
    end_lon           double precision,
    -- The taximeter reading of the `ended` event.
    meter_cents       bigint,
    updated_at        timestamptz      NOT NULL
);

CREATE INDEX tours_taxi_id_idx ON tours (taxi_id, started_at);

-- One invoice per ended tour: the fare computed from the tariff over the taxi's stored
-- positions, compared with the meter. Money in cents, distance in metres, times in seconds.
CREATE TABLE invoices (
    tour_id          text             PRIMARY KEY REFERENCES tours (tour_id),
    taxi_id          text             NOT NULL,
    started_at       timestamptz      NOT NULL,
    ended_at         timestamptz      NOT NULL,
    -- Fixes the fare was computed over, the start and end events included.
    track_points     integer          NOT NULL,
    distance_m       double precision NOT NULL,
    driving_s        double precision NOT NULL,
    waiting_s        double precision NOT NULL,
    base_cents       bigint           NOT NULL,
    distance_cents   bigint           NOT NULL,
    driving_cents    bigint           NOT NULL,
    waiting_cents    bigint           NOT NULL,
    night_cents      bigint           NOT NULL,
    zone_cents       bigint           NOT NULL,
    zones            text[]           NOT NULL,
    fare_cents       bigint           NOT NULL,
    currency         text             NOT NULL,
    meter_cents      bigint,
    -- meter_cents - fare_cents.
    difference_cents bigint,
    flagged          boolean          NOT NULL,
    flag_reason      text,
    -- The inbox message (table orders) that tells the taxi.
    order_id         text             NOT NULL,
    issued_at        timestamptz      NOT NULL,
    -- When the broker acknowledged it on backoffice/invoices; NULL: not yet.
    published_at     timestamptz
);

CREATE INDEX invoices_taxi_id_idx ON invoices (taxi_id, ended_at);
CREATE INDEX invoices_unpublished_idx ON invoices (issued_at) WHERE published_at IS NULL;
CREATE INDEX invoices_flagged_idx ON invoices (issued_at) WHERE flagged;
