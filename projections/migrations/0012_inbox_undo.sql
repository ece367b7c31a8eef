-- A recipient can mark an item unread again and take it out of the archive. read_at and archived_at
-- keep the first time (engagement statistics count what was ever read); the feed compares the last
-- read (archive) with the last unread (unarchive) to show the item's state now.
ALTER TABLE inbox_states ADD COLUMN IF NOT EXISTS last_read_at timestamptz;
ALTER TABLE inbox_states ADD COLUMN IF NOT EXISTS unread_at timestamptz;
ALTER TABLE inbox_states ADD COLUMN IF NOT EXISTS last_archived_at timestamptz;
ALTER TABLE inbox_states ADD COLUMN IF NOT EXISTS unarchived_at timestamptz;
UPDATE inbox_states SET last_read_at = COALESCE(last_read_at, read_at),
                        last_archived_at = COALESCE(last_archived_at, archived_at)
WHERE (last_read_at IS NULL AND read_at IS NOT NULL) OR (last_archived_at IS NULL AND archived_at IS NOT NULL);
