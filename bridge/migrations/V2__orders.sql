-- Orders and messages to taxis, and every change of their state.
--
-- An order enters through the dispatch HTTP API (sender = the API token's name), a backoffice
-- app publishing on taxi/<id>/inbox itself (sender 'mqtt'), or another part of the platform
-- inserting a row with state 'queued' (sender 'platform'); dispatch delivers queued orders
-- within about a second. States only move forward:
--   queued < sent < received < accepted | rejected;  expired is final.
-- The taxi's acks (table acks) move an order forward through the trigger below, but only
-- acks of the taxi the order is for.

CREATE TABLE orders (
    order_id     text        PRIMARY KEY
                 CHECK (octet_length(order_id) BETWEEN 1 AND 128 AND order_id ~ '^[A-Za-z0-9_.:-]+$'),
    taxi_id      text        NOT NULL,
    kind         text        NOT NULL CHECK (kind IN ('order', 'message', 'invoice')),
    text         text        NOT NULL,
    -- The API token's name, 'mqtt' (published directly by a backoffice app) or 'platform'.
    sender       text        NOT NULL,
    created_at   timestamptz NOT NULL,
    -- NULL: never expires.
    expires_at   timestamptz,
    state        text        NOT NULL
                 CHECK (state IN ('queued', 'sent', 'received', 'accepted', 'rejected', 'expired')),
    updated_at   timestamptz NOT NULL,
    -- Publications by dispatch (first send and resends), and the last one.
    attempts     integer     NOT NULL DEFAULT 0,
    last_sent_at timestamptz,
    -- The taxi's reason, for a rejection.
    reason       text
);

CREATE INDEX orders_taxi_created_idx ON orders (taxi_id, created_at DESC);
-- What dispatch still has to deliver or expire.
CREATE INDEX orders_pending_idx ON orders (taxi_id) WHERE state IN ('queued', 'sent', 'received');

CREATE TABLE order_events (
    id       bigserial   PRIMARY KEY,
    order_id text        NOT NULL REFERENCES orders (order_id) ON DELETE CASCADE,
    state    text        NOT NULL
             CHECK (state IN ('queued', 'sent', 'received', 'accepted', 'rejected', 'expired')),
    at       timestamptz NOT NULL,
    -- What caused it: 'api', 'mqtt', 'ack seq 7', 'expired at ...', ...
    detail   text
);

CREATE INDEX order_events_order_idx ON order_events (order_id, id);

-- The order of states; expired is final and outranks everything.
CREATE FUNCTION order_state_rank(state text) RETURNS integer
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE state
        WHEN 'queued' THEN 0
        WHEN 'sent' THEN 1
        WHEN 'received' THEN 2
        WHEN 'accepted' THEN 3
        WHEN 'rejected' THEN 3
        ELSE 4
    END
$$;

-- Every new order gets its first event.
CREATE FUNCTION order_created_event() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO order_events (order_id, state, at, detail)
    VALUES (NEW.order_id, NEW.state, NEW.updated_at, 'created by ' || NEW.sender);
    RETURN NULL;
END
$$;

CREATE TRIGGER orders_created AFTER INSERT ON orders
    FOR EACH ROW EXECUTE FUNCTION order_created_event();

-- Moves an order forward to `new_state` if that is forward, the order is not expired, and
-- `from_taxi` is the order's taxi. Records the change. Returns true if it changed.
CREATE FUNCTION order_advance(
    p_order_id text, from_taxi text, new_state text, at timestamptz, detail text, p_reason text
) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE orders o
       SET state = new_state,
           updated_at = at,
           reason = CASE WHEN new_state = 'rejected' THEN p_reason ELSE o.reason END
     WHERE o.order_id = p_order_id
       AND o.taxi_id = from_taxi
       AND o.state <> 'expired'
       AND order_state_rank(new_state) > order_state_rank(o.state);
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    INSERT INTO order_events (order_id, state, at, detail)
    VALUES (p_order_id, new_state, at, detail);
    RETURN true;
END
$$;

-- A taxi's answer, stored once by the pipeline, moves its own order forward.
CREATE FUNCTION order_apply_ack() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM order_advance(
        NEW.order_id, NEW.taxi_id, NEW.state, NEW.received_at,
        'ack seq ' || NEW.seq || COALESCE(': ' || NEW.reason, ''), NEW.reason);
    RETURN NULL;
END
$$;

CREATE TRIGGER acks_advance_orders AFTER INSERT ON acks
    FOR EACH ROW EXECUTE FUNCTION order_apply_ack();

-- An inbox message seen on the broker (published by dispatch or by a backoffice app):
-- records an unknown order as sent by 'mqtt' (or expired, if it is), applies acks that
-- arrived before it was recorded, and marks a queued order as sent. Returns what happened:
-- 'recorded', 'sent', 'known', or 'other_taxi' (the order id belongs to another taxi).
CREATE FUNCTION order_seen_on_inbox(
    p_order_id text, p_taxi_id text, p_kind text, p_text text,
    p_created_at timestamptz, p_expires_at timestamptz
) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    existing orders%ROWTYPE;
    ack record;
BEGIN
    INSERT INTO orders (order_id, taxi_id, kind, text, sender, created_at, expires_at, state,
                        updated_at, attempts, last_sent_at)
    VALUES (p_order_id, p_taxi_id, p_kind, p_text, 'mqtt', p_created_at, p_expires_at,
            CASE WHEN p_expires_at <= now() THEN 'expired' ELSE 'sent' END,
            now(), 0, now())
    ON CONFLICT (order_id) DO NOTHING;
    IF FOUND THEN
        FOR ack IN SELECT * FROM acks WHERE order_id = p_order_id ORDER BY seq LOOP
            PERFORM order_advance(
                ack.order_id, ack.taxi_id, ack.state, ack.received_at,
                'ack seq ' || ack.seq || COALESCE(': ' || ack.reason, ''), ack.reason);
        END LOOP;
        RETURN 'recorded';
    END IF;
    SELECT * INTO existing FROM orders WHERE order_id = p_order_id;
    IF existing.taxi_id <> p_taxi_id THEN
        RETURN 'other_taxi';
    END IF;
    IF existing.state = 'queued' THEN
        PERFORM order_advance(p_order_id, p_taxi_id, 'sent', now(), 'on the broker', NULL);
        RETURN 'sent';
    END IF;
    RETURN 'known';
END
$$;
