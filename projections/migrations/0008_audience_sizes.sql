-- Each audience's size, kept by the audiences projection as members join and leave, so reading it (and
-- recording it on each broadcast) does not count the members.
CREATE TABLE IF NOT EXISTS audiences (
    tenant_id   text NOT NULL,
    audience_id text NOT NULL,
    members     bigint NOT NULL,
    PRIMARY KEY (tenant_id, audience_id)
);
INSERT INTO audiences (tenant_id, audience_id, members)
SELECT tenant_id, audience_id, count(*) FROM audience_members GROUP BY 1, 2
ON CONFLICT (tenant_id, audience_id) DO NOTHING;
