-- `tidings db prune` deletes a recipient's seen/read/archived state of a notification by the latest of
-- its times (projections/retention.py, DELETE_STATES), oldest first, a batch at a time: without this
-- index every batch read the whole table. The expression must stay the prune's for the planner to use it.
CREATE INDEX IF NOT EXISTS inbox_states_latest ON inbox_states (
    GREATEST(seen_at, read_at, archived_at, withdrawn_at, last_read_at, unread_at, last_archived_at, unarchived_at)
);
