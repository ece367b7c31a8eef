-- Who holds a number, for the edge's inbound SMS STOP/START (gateways/sms/holders.py).
CREATE INDEX IF NOT EXISTS recipients_phone ON recipients (tenant_id, phone);
