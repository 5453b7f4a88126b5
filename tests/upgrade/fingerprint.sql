-- Everything stored, as one digest per table: equal before and after the upgrade.
\set ON_ERROR_STOP on
SELECT 'events', count(*), md5(string_agg(format('%s|%s|%s|%s|%s|%s|%s|%s|%s|%s', position, stream_id, version,
       event_id, event_type, tenant_id, payload, metadata, created_at, encode(checksum, 'hex')), ',' ORDER BY position))
  FROM allsource.events
UNION ALL
SELECT 'streams', count(*), md5(string_agg(format('%s|%s|%s|%s|%s|%s|%s|%s', stream_id, partition_id, version, tenant_id,
       encode(last_checksum, 'hex'), deleted_at, deleted_by, erased_at), ',' ORDER BY stream_id))
  FROM allsource.streams
UNION ALL
SELECT 'snapshots', count(*), md5(string_agg(format('%s|%s|%s', stream_id, version, state), ',' ORDER BY stream_id))
  FROM allsource.snapshots
UNION ALL
SELECT 'event_ids', count(*), md5(string_agg(format('%s|%s', event_id, position), ',' ORDER BY position))
  FROM allsource.event_ids
UNION ALL
SELECT 'erased_events', count(*), md5(string_agg(format('%s|%s|%s', position, encode(payload_digest, 'hex'),
       encode(metadata_digest, 'hex')), ',' ORDER BY position))
  FROM allsource.erased_events;
