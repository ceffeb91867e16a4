-- Indexes for the analytics layer's live windows (analytics/src/speed), which read what the
-- bridge has committed: every few seconds the rows of one window of device time (`ts`, `at`),
-- and the rows received since the last look (`received_at`).
--
-- positions: BRIN, a few bytes per range of 128 pages, which costs the pipeline almost nothing
-- per insert. Within a day partition rows arrive nearly in device-time and receipt-time order,
-- so the ranges stay narrow. autosummarize has autovacuum summarise each range once it is
-- full, so that only the newest, unsummarised pages are scanned every time. New day
-- partitions get both indexes when they are attached.
CREATE INDEX positions_ts_brin ON positions USING brin (ts) WITH (autosummarize = on);
CREATE INDEX positions_received_at_brin ON positions USING brin (received_at)
    WITH (autosummarize = on);

-- Tour events and order events are few (a handful per taxi and hour): plain B-trees.
CREATE INDEX tour_events_ts_idx ON tour_events (ts);
CREATE INDEX tour_events_received_at_idx ON tour_events (received_at);
CREATE INDEX order_events_at_idx ON order_events (at);
