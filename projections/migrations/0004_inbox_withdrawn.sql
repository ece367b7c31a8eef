-- A notification cancelled after its in-app item was delivered is withdrawn from the inbox: the feed
-- and the unread count leave it out (the `inbox` projection folds NotificationCancelled into it).
ALTER TABLE inbox_states ADD COLUMN IF NOT EXISTS withdrawn_at timestamptz;
