-- monitor (services/monitor): the operator lifts a ban (`mpcw node unban NODE`, subject node.unban.<node>).
--
-- After an unban only violations recorded after it count toward the next ban (otherwise the five that
-- caused the ban would ban the node again on its next violation). Every report is still kept.
ALTER TABLE node_status ADD COLUMN unbanned_at timestamptz;
