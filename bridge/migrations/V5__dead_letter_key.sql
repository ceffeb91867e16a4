-- A dead letter is stored once per message: a message the broker delivers again (after a
-- crash of the bridge, or a replay of the archive) carries the same bytes on the same topic.
-- Copies already stored twice are removed first, keeping the earliest.
DELETE FROM dead_letters later
USING dead_letters earlier
WHERE later.id > earlier.id
  AND later.topic = earlier.topic
  AND later.payload = earlier.payload;

CREATE UNIQUE INDEX dead_letters_message_key_idx ON dead_letters (topic, sha256(payload));
