-- V3__daily: the batch layer's daily aggregates.
--
-- One row per calendar day and source: 'fleet' (the platform's own data; days of the
-- configured time_zone, 23 or 25 hours long on daylight-saving days) and 'nyc' (the imported
-- TLC trips; New York days). A day is always replaced whole, in one transaction, so running a
-- day again gives the same rows. Money in cents, distances in metres.
CREATE TABLE daily_fleet (
    day              date             NOT NULL,
    source           text             NOT NULL CHECK (source IN ('fleet', 'nyc')),
    -- fleet: tours that ended that day; nyc: trips picked up that day.
    trips            bigint           NOT NULL,
    -- fleet: the invoices' fares; nyc: total_amount.
    revenue_cents    bigint           NOT NULL,
    distance_m       double precision NOT NULL,
    -- The columns below are NULL where the source has no such data (nyc).
    active_taxis     bigint,
    positions        bigint,
    -- fleet: mean invoice fare; nyc: mean fare_amount; NULL without any fare.
    avg_fare_cents   double precision,
    flagged_invoices bigint,
    -- Orders (kind 'order') created that day, by their state now; open = queued, sent or
    -- received.
    orders_accepted  bigint,
    orders_rejected  bigint,
    orders_expired   bigint,
    orders_open      bigint,
    -- Trips of this source from its first aggregated day up to and including this day.
    cumulative_trips bigint           NOT NULL,
    computed_at      timestamptz      NOT NULL DEFAULT now(),
    -- When the lake got this row (daily_fleet) and the day's zones (daily_zone); NULL: the
    -- lake's copy is out of date and is published again.
    published_at       timestamptz,
    zones_published_at timestamptz,
    PRIMARY KEY (day, source)
);

CREATE INDEX daily_fleet_source_day_idx ON daily_fleet (source, day);
CREATE INDEX daily_fleet_unpublished_idx ON daily_fleet (source, day)
    WHERE published_at IS NULL OR zones_published_at IS NULL;

-- The same per zone (H3 cell; TLC zones as 'tlc:<LocationID>'; 'unknown' for NYC trips
-- without a zone). Fleet trips count in the zone where they started, positions where they
-- were reported.
CREATE TABLE daily_zone (
    day            date             NOT NULL,
    source         text             NOT NULL CHECK (source IN ('fleet', 'nyc')),
    zone           text             NOT NULL,
    trips          bigint           NOT NULL,
    revenue_cents  bigint           NOT NULL,
    distance_m     double precision NOT NULL,
    active_taxis   bigint,
    positions      bigint,
    avg_fare_cents double precision,
    PRIMARY KEY (day, source, zone)
);
