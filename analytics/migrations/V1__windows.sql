-- The speed layer's live windows (analytics/src/speed): one row per closed tumbling window of
-- device time and zone, written once when the window closes. Only late_events changes later.
--
-- A window [window_start, window_end) holds the events whose device time is in it and that the
-- bridge received by window_end + windows.allowed_lateness_ms; events of the window received
-- after that are counted in late_events of its fleet row, never folded into the values.
CREATE TABLE windows (
    window_start    timestamptz      NOT NULL,
    window_end      timestamptz      NOT NULL,
    -- 'fleet' for the whole fleet, otherwise the H3 cell at windows.h3_resolution as its
    -- standard 15-character lowercase hexadecimal string (e.g. '881f1d4887fffff').
    zone            text             NOT NULL,
    -- Position fixes, and the distinct taxis that sent them.
    positions       bigint           NOT NULL,
    taxis           bigint           NOT NULL,
    -- Over the fixes that carry a speed; NULL when none does.
    avg_speed_kmh   double precision,
    max_speed_kmh   double precision,
    -- Distinct tours with a `started` / `ended` event in the window (in the event's zone).
    tours_started   bigint           NOT NULL,
    tours_ended     bigint           NOT NULL,
    -- Taximeter readings (meter_cents) of the `ended` events counted.
    revenue_cents   bigint           NOT NULL,
    -- Orders (inbox messages of kind 'order') sent to a taxi / accepted by it, by server time.
    -- Fleet row only: 0 in zone rows.
    orders_sent     bigint           NOT NULL,
    orders_accepted bigint           NOT NULL,
    -- Events of the window that were not folded into the values: received after the allowed
    -- lateness, or committed by the bridge after the window closed. Fleet row only.
    late_events     bigint           NOT NULL DEFAULT 0,
    -- When the window was closed.
    computed_at     timestamptz      NOT NULL,
    PRIMARY KEY (window_start, zone),
    CHECK (window_end > window_start)
);

-- How far the speed layer has come; one row. Each instant is the end of a window (or the
-- start of the first), each step is committed in the same transaction as what it covers.
CREATE TABLE windows_progress (
    only_row           boolean     PRIMARY KEY DEFAULT true CHECK (only_row),
    -- The first window computed (the current one when the layer first started).
    first_window_start timestamptz NOT NULL,
    -- Every window ending at or before this is closed and in `windows`.
    closed_until       timestamptz NOT NULL,
    -- Late events received up to this instant (the bridge's receipt time) are counted.
    late_until         timestamptz NOT NULL,
    -- Every window ending at or before this has been recounted (see windows.recount_after_ms).
    recounted_until    timestamptz NOT NULL,
    -- Every window ending at or before this has been published on MQTT (acknowledged).
    published_until    timestamptz NOT NULL,
    updated_at         timestamptz NOT NULL
);
