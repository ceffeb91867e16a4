-- An order and its taxi's acks may be stored at the same moment by concurrent transactions
-- (an order published directly over MQTT is recorded when dispatch sees it on the broker,
-- while the pipeline stores the taxi's answer): under READ COMMITTED neither saw the other's
-- uncommitted row, so the acks were never applied and the order stayed 'sent'.
--
-- Both paths now take a transaction-scoped advisory lock on the order id first: the one that
-- comes second waits until the first has committed, and its next statement (a new snapshot:
-- the functions are VOLATILE) sees the first one's row. Acks take the lock shared (batches of
-- acks never wait for each other, so they cannot deadlock among themselves); recording an
-- inbox message takes it exclusively and holds no other advisory lock.

-- The advisory lock class of order ids (the first key of the two-key form).
CREATE OR REPLACE FUNCTION order_lock_class() RETURNS integer
LANGUAGE sql IMMUTABLE AS $$ SELECT 1869767780 $$;  -- 'orde'

CREATE OR REPLACE FUNCTION order_apply_ack() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock_shared(order_lock_class(), hashtext(NEW.order_id));
    PERFORM order_advance(
        NEW.order_id, NEW.taxi_id, NEW.state, NEW.received_at,
        'ack seq ' || NEW.seq || COALESCE(': ' || NEW.reason, ''), NEW.reason);
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION order_seen_on_inbox(
    p_order_id text, p_taxi_id text, p_kind text, p_text text,
    p_created_at timestamptz, p_expires_at timestamptz
) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    existing orders%ROWTYPE;
    ack record;
BEGIN
    PERFORM pg_advisory_xact_lock(order_lock_class(), hashtext(p_order_id));
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
