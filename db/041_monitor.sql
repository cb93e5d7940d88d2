-- monitor (services/monitor): which violations count toward a ban.
--
-- Anyone may report a violation (node.violation.<offender>), so a node could try to get an honest node
-- banned by reporting it five times. A report counts toward the 5-in-24-h ban only when a service
-- (consensus, recorder, broadcaster, presig, intake, monitor) or the operator reported it, or when its
-- evidence is an envelope that verifiably carries the offender's own signature. Every report is kept.
ALTER TABLE byzantine_violations ADD COLUMN counts boolean NOT NULL DEFAULT true;
CREATE INDEX byzantine_violations_counting_idx ON byzantine_violations (node_id, created_at) WHERE counts;
