//! The checks after each recovery, periodically and at the end, with the
//! writers paused: every event acknowledged since the last check is there
//! exactly once with its content, in-doubt events are there at most once and
//! intact, refused ones are absent, `verify_all()` is clean (chains and
//! gapless versions), no stream went below an acknowledged version,
//! positions are unique, and every reader saw each event up to its cursor
//! exactly once.

use crate::ledger::{Key, Ledger};
use crate::shared::Shared;
use postgres::Client;
use serde_json::Value;
use std::collections::HashMap;
use uuid::Uuid;

/// What a passed check found, for the log.
pub struct Report {
    pub verified: usize,
    pub in_doubt_present: usize,
    pub in_doubt_absent: usize,
    pub refused: usize,
    pub events: i64,
    pub bytes_per_event: f64,
}

/// Runs every check; the ledger's pending entries are dropped once verified
/// (verify_all's chains protect them from then on).
pub fn check(
    shared: &Shared,
    client: &mut Client,
    checked_positions: &mut i64,
) -> Result<Report, String> {
    let mut ledger = shared.ledger.lock().unwrap();
    let verified = acknowledged_events(shared, client, &mut ledger)?;
    let (in_doubt_present, in_doubt_absent) = in_doubt_events(shared, client, &ledger)?;
    let refused = refused_events(shared, client, &ledger)?;
    stream_versions(shared, client, &ledger)?;
    verify_all(client)?;
    unique_positions(client, checked_positions)?;
    readers(shared, client)?;
    ledger.pending.clear();
    ledger.in_doubt.clear();
    ledger.absent.clear();
    ledger.in_doubt_present += in_doubt_present as u64;
    drop(ledger);
    let row = query_one(
        client,
        "SELECT (SELECT count(*) FROM allsource.events), \
                (SELECT sum(pg_total_relation_size(relid)) FROM pg_partition_tree('allsource.events'))::bigint \
                + pg_total_relation_size('allsource.event_ids') + pg_total_relation_size('allsource.streams')",
        &[],
    )?;
    let events: i64 = row.get(0);
    let bytes: i64 = row.get(1);
    Ok(Report {
        verified,
        in_doubt_present,
        in_doubt_absent,
        refused,
        events,
        bytes_per_event: bytes as f64 / events.max(1) as f64,
    })
}

fn query(
    client: &mut Client,
    sql: &str,
    params: &[&(dyn postgres::types::ToSql + Sync)],
) -> Result<Vec<postgres::Row>, String> {
    client
        .query(sql, params)
        .map_err(|e| format!("check query failed: {e}"))
}

fn query_one(
    client: &mut Client,
    sql: &str,
    params: &[&(dyn postgres::types::ToSql + Sync)],
) -> Result<postgres::Row, String> {
    client
        .query_one(sql, params)
        .map_err(|e| format!("check query failed: {e}"))
}

/// Compares one stored event with what its key says it holds.
fn same_content(
    key: Key,
    event_type: &str,
    payload: &str,
    metadata: Option<&str>,
) -> Result<(), String> {
    let parse = |text: &str| serde_json::from_str::<Value>(text).map_err(|e| e.to_string());
    if event_type != key.event_type() {
        return Err(format!(
            "type {event_type:?}, acknowledged {:?}",
            key.event_type()
        ));
    }
    if parse(payload)? != key.payload() {
        return Err(format!("payload {payload}, acknowledged {}", key.payload()));
    }
    let stored = metadata.map(parse).transpose()?;
    if stored != key.metadata() {
        return Err(format!(
            "metadata {stored:?}, acknowledged {:?}",
            key.metadata()
        ));
    }
    Ok(())
}

/// Every acknowledged event, read back in one query per 10,000.
fn acknowledged_events(
    shared: &Shared,
    client: &mut Client,
    ledger: &mut Ledger,
) -> Result<usize, String> {
    ledger.pending.sort_by_key(|a| (a.stream, a.version));
    for chunk in ledger.pending.chunks(10_000) {
        let streams: Vec<&str> = chunk
            .iter()
            .map(|a| shared.streams[a.stream as usize].as_str())
            .collect();
        let versions: Vec<i64> = chunk.iter().map(|a| a.version).collect();
        let rows = query(
            client,
            "SELECT u.i, e.position, e.event_id, e.event_type, e.payload::text, e.metadata::text \
             FROM unnest($1::text[], $2::bigint[]) WITH ORDINALITY AS u(stream_id, version, i) \
             JOIN allsource.streams s ON s.stream_id = u.stream_id \
             JOIN allsource.events e ON e.partition_id = s.partition_id \
                  AND e.stream_id = u.stream_id AND e.version = u.version",
            &[&streams, &versions],
        )?;
        let stored: HashMap<usize, &postgres::Row> = rows
            .iter()
            .map(|row| (row.get::<_, i64>(0) as usize - 1, row))
            .collect();
        let mut previous: Option<(u32, i64)> = None;
        for (index, a) in chunk.iter().enumerate() {
            let name = streams[index];
            let Some(row) = stored.get(&index) else {
                return Err(format!(
                    "acknowledged event missing: stream {name} version {} (writer {}, seq {})",
                    a.version, a.key.writer, a.key.seq
                ));
            };
            let position: i64 = row.get(1);
            let event_id: Uuid = row.get(2);
            let problem = if event_id != a.key.event_id(shared.run) {
                Err(format!(
                    "event id {event_id}, acknowledged {}",
                    a.key.event_id(shared.run)
                ))
            } else if a.position.is_some_and(|p| p != position) {
                Err(format!(
                    "position {position}, acknowledged {:?}",
                    a.position
                ))
            } else if previous.is_some_and(|(stream, p)| stream == a.stream && p >= position) {
                Err(format!(
                    "position {position} not above the previous version's"
                ))
            } else {
                same_content(a.key, row.get(3), row.get(4), row.get(5))
            };
            problem.map_err(|p| format!("stream {name} version {}: {p}", a.version))?;
            previous = Some((a.stream, position));
        }
    }
    Ok(ledger.pending.len())
}

/// The stored events among `keys`, by key: stream, type, payload, metadata.
fn stored_by_id(
    shared: &Shared,
    client: &mut Client,
    keys: &[Key],
) -> Result<HashMap<Key, postgres::Row>, String> {
    let ids: Vec<Uuid> = keys.iter().map(|key| key.event_id(shared.run)).collect();
    let rows = query(
        client,
        "SELECT e.event_id, e.stream_id, e.event_type, e.payload::text, e.metadata::text \
         FROM allsource.event_ids i \
         JOIN allsource.events e ON e.partition_id = i.partition_id AND e.position = i.position \
         WHERE i.event_id = ANY ($1)",
        &[&ids],
    )?;
    let mut found = HashMap::new();
    for row in rows {
        let key = Key::from_event_id(row.get(0), shared.run).ok_or("an event id of another run")?;
        if found.insert(key, row).is_some() {
            return Err(format!(
                "event of writer {} seq {} stored twice",
                key.writer, key.seq
            ));
        }
    }
    Ok(found)
}

fn in_doubt_events(
    shared: &Shared,
    client: &mut Client,
    ledger: &Ledger,
) -> Result<(usize, usize), String> {
    let keys: Vec<Key> = ledger.in_doubt.iter().map(|(_, key)| *key).collect();
    let found = stored_by_id(shared, client, &keys)?;
    for (stream, key) in &ledger.in_doubt {
        if let Some(row) = found.get(key) {
            let name = &shared.streams[*stream as usize];
            let stored_stream: &str = row.get(1);
            if stored_stream != name {
                return Err(format!(
                    "in-doubt event {key:?} stored in {stored_stream}, sent to {name}"
                ));
            }
            same_content(*key, row.get(2), row.get(3), row.get(4))
                .map_err(|p| format!("in-doubt event {key:?}: {p}"))?;
        }
    }
    Ok((found.len(), keys.len() - found.len()))
}

fn refused_events(shared: &Shared, client: &mut Client, ledger: &Ledger) -> Result<usize, String> {
    let found = stored_by_id(shared, client, &ledger.absent)?;
    if let Some((key, row)) = found.iter().next() {
        let stream: &str = row.get(1);
        return Err(format!(
            "{} events rolled back or refused are stored, e.g. writer {} seq {} in {stream}",
            found.len(),
            key.writer,
            key.seq
        ));
    }
    Ok(ledger.absent.len())
}

fn stream_versions(shared: &Shared, client: &mut Client, ledger: &Ledger) -> Result<(), String> {
    let rows = query(
        client,
        "SELECT stream_id, version FROM allsource.streams",
        &[],
    )?;
    let stored: HashMap<&str, i64> = rows.iter().map(|row| (row.get(0), row.get(1))).collect();
    for (&stream, &acked) in &ledger.acked_versions {
        let name = shared.streams[stream as usize].as_str();
        let version = stored.get(name).copied().unwrap_or(0);
        if version < acked {
            return Err(format!(
                "stream {name} is at version {version}, but version {acked} was acknowledged"
            ));
        }
    }
    Ok(())
}

fn verify_all(client: &mut Client) -> Result<(), String> {
    let rows = query(
        client,
        "SELECT stream_id, first_bad_version, problem FROM allsource.verify_all()",
        &[],
    )?;
    match rows.first() {
        None => Ok(()),
        Some(row) => Err(format!(
            "verify_all(): {} streams fail, e.g. {} at version {:?}: {}",
            rows.len(),
            row.get::<_, String>(0),
            row.get::<_, Option<i64>>(1),
            row.get::<_, String>(2)
        )),
    }
}

/// Positions are unique across partitions (each partition's key only covers
/// its own rows); checked for the positions stored since the last check.
fn unique_positions(client: &mut Client, checked: &mut i64) -> Result<(), String> {
    let row = query_one(
        client,
        "SELECT (SELECT min(position) FROM (SELECT position FROM allsource.events WHERE position > $1 \
                 GROUP BY position HAVING count(*) > 1) twice), \
                (SELECT max(position) FROM allsource.events)",
        &[checked],
    )?;
    if let Some(position) = row.get::<_, Option<i64>>(0) {
        return Err(format!("position {position} is stored more than once"));
    }
    *checked = row.get::<_, Option<i64>>(1).unwrap_or(*checked);
    Ok(())
}

/// Each reader saw every event from its last verified cursor up to its
/// current one exactly once: same count, same sum of positions.
fn readers(shared: &Shared, client: &mut Client) -> Result<(), String> {
    for reader in &shared.readers {
        let progress = *reader.progress.lock().unwrap();
        let verified = *reader.verified.lock().unwrap();
        let row = query_one(
            client,
            &format!(
                "SELECT count(*), coalesce(sum(position), 0)::text FROM allsource.events \
                 WHERE position > $1 AND position <= $2 AND {}",
                reader.filter()
            ),
            &[&verified.cursor, &progress.cursor],
        )?;
        let events = row.get::<_, i64>(0) as u64;
        let sum: i128 = row
            .get::<_, String>(1)
            .parse()
            .map_err(|e| format!("sum: {e}"))?;
        let seen = progress.events - verified.events;
        let seen_sum = progress.position_sum - verified.position_sum;
        if (events, sum) != (seen, seen_sum) {
            return Err(format!(
                "{} saw {seen} events (position sum {seen_sum}) in ({}, {}], the table has {events} (sum {sum})",
                reader.name(),
                verified.cursor,
                progress.cursor
            ));
        }
        *reader.verified.lock().unwrap() = progress;
    }
    Ok(())
}
