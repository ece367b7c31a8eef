-- The id of each topic a projection's stored offsets count. A topic deleted and created again keeps its
-- name and partitions but gets a new id; offsets stored for the old one would skip the new topic's first
-- records. The runner records the ids at its first assignment and stops when one has changed.
CREATE TABLE IF NOT EXISTS projection_topics (
    projection text NOT NULL,
    topic      text NOT NULL,
    topic_id   text NOT NULL,
    PRIMARY KEY (projection, topic)
);
