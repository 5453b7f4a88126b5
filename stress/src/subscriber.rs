//! Subscriptions under the load: a handler subscription projecting every
//! event into a table inside the database (exactly once, in per-stream order),
//! and an external subscription of three members, each consumed by a session
//! of its own with `receive` and `ack` through the crashes (at least once,
//! duplicates only for events received and not acknowledged before a session
//! died). The checks compare both with the committed events.

use crate::shared::{Counters, Shared};
use postgres::Client;
use std::collections::BTreeSet;
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The handler subscription, its table and its handler.
pub const PROJECTION: &str = "stress_projection";
/// The subscription of the external consumers.
pub const CONSUMERS: &str = "stress_consumers";
pub const MEMBERS: i32 = 3;
/// The types the consumers' subscription delivers (of Created, Updated, Noted).
const CONSUMED_TYPES: &str = "ARRAY['Created', 'Updated']";
/// Events a consumer receives at a time.
const BATCH: i32 = 100;

/// The projection: per stream the events applied, the sum of their `seq`,
/// and the last version applied. The handler refuses any event that is not
/// the next version of its stream (a duplicate, a gap or a reordering), so a
/// wrong delivery parks an event instead of passing unseen.
const SETUP: &str = "
    CREATE TABLE public.stress_projection (
        stream text PRIMARY KEY, events bigint NOT NULL, seq_sum numeric NOT NULL, last_version bigint NOT NULL);
    CREATE FUNCTION public.stress_project(e allsource.events) RETURNS void
    LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
    DECLARE
        previous bigint;
        seq numeric := CASE pg_catalog.jsonb_typeof(e.payload -> 'seq')
                           WHEN 'number' THEN (e.payload ->> 'seq')::numeric ELSE 0 END;
    BEGIN
        SELECT p.last_version INTO previous FROM public.stress_projection p WHERE p.stream = e.stream_id;
        IF coalesce(previous, 0) + 1 <> e.version THEN
            RAISE EXCEPTION 'stream % version % handed over after version %', e.stream_id, e.version, previous;
        END IF;
        INSERT INTO public.stress_projection AS p VALUES (e.stream_id, 1, seq, e.version)
        ON CONFLICT (stream) DO UPDATE
        SET events = p.events + 1, seq_sum = p.seq_sum + excluded.seq_sum, last_version = excluded.last_version;
    END $$;";

/// What a consumer has seen of its member, for the checks.
#[derive(Default)]
pub struct MemberState {
    /// The last position acknowledged with success: never delivered again.
    pub acked: i64,
    /// Every matching event up to here was received (the last check).
    pub verified: i64,
    /// Received in this session and not acknowledged yet.
    in_flight: BTreeSet<i64>,
    /// Received by a session that died before acknowledging them: these,
    /// and only these, may come again.
    may_repeat: BTreeSet<i64>,
    /// Received above `verified`.
    received: BTreeSet<i64>,
    pub received_total: u64,
    pub duplicates: u64,
}

impl MemberState {
    /// A batch `receive` returned: ascending, above the last acknowledged
    /// position, and nothing twice unless a dead session left it unacknowledged.
    fn receive(&mut self, positions: &[i64]) -> Result<(), String> {
        let mut previous = self.acked;
        for &position in positions {
            if position <= previous {
                return Err(format!(
                    "position {position} delivered after {previous} (last acknowledged {})",
                    self.acked
                ));
            }
            previous = position;
            if !self.received.insert(position) {
                if !self.may_repeat.remove(&position) {
                    return Err(format!(
                        "position {position} delivered twice, though no session died with it unacknowledged"
                    ));
                }
                self.duplicates += 1;
            }
            self.in_flight.insert(position);
            self.received_total += 1;
        }
        Ok(())
    }

    fn acknowledged(&mut self, position: i64) {
        self.acked = position;
        self.in_flight.retain(|&p| p > position);
        self.may_repeat.retain(|&p| p > position);
    }

    /// The session died: what it had not acknowledged may come again.
    fn session_lost(&mut self) {
        self.may_repeat.append(&mut self.in_flight);
    }
}

pub struct Member {
    pub number: i32,
    pub state: Mutex<MemberState>,
}

/// The two subscriptions and what their consumers saw.
pub struct Subscriptions {
    /// Both start after this position (the watermark when the run began).
    pub start: i64,
    pub members: Vec<Member>,
    /// `55006`: a consumer came back while its dead session still held the member.
    pub held: AtomicU64,
}

/// Creates both subscriptions afresh (dropping those of an earlier run),
/// starting at the watermark, with the projection seeded with each stream's
/// version so that its handler's version check holds from the first event.
pub fn prepare(client: &mut Client) -> Result<Subscriptions, String> {
    let sql = format!(
        "SELECT allsource.drop_subscription(name) FROM (SELECT DISTINCT name FROM allsource.subscriptions()
             WHERE name IN ('{PROJECTION}', '{CONSUMERS}')) earlier;
         DROP TABLE IF EXISTS public.stress_projection;
         DROP FUNCTION IF EXISTS public.stress_project(allsource.events);
         {SETUP}
         BEGIN;
         INSERT INTO public.stress_projection
             SELECT stream_id, 0, 0, max(version) FROM allsource.events WHERE tenant_id IS NULL GROUP BY stream_id;
         SELECT allsource.create_subscription('{PROJECTION}', start_after => allsource.watermark(),
             handler => 'public.stress_project(allsource.events)', max_attempts => 3);
         SELECT allsource.create_subscription('{CONSUMERS}', event_types => {CONSUMED_TYPES},
             start_after => allsource.watermark(), members => {MEMBERS});
         COMMIT;"
    );
    client
        .batch_execute(&sql)
        .map_err(|e| format!("creating the subscriptions: {e}"))?;
    let start: i64 = client
        .query_one(
            "SELECT start_after FROM allsource.subscriptions WHERE name = $1",
            &[&PROJECTION],
        )
        .map_err(|e| format!("reading the subscriptions: {e}"))?
        .get(0);
    let members = (0..MEMBERS)
        .map(|number| Member {
            number,
            state: Mutex::new(MemberState {
                acked: start,
                verified: start,
                ..MemberState::default()
            }),
        })
        .collect();
    Ok(Subscriptions {
        start,
        members,
        held: AtomicU64::new(0),
    })
}

enum Failure {
    Lost,
    Held,
    Unexpected(String),
}

fn classify(error: &postgres::Error) -> Failure {
    match error.as_db_error().map(|db| db.code().code()) {
        None | Some("57P01" | "57P02" | "57P03" | "08000" | "08003" | "08006") => Failure::Lost,
        Some("55006") => Failure::Held,
        Some(code) => Failure::Unexpected(format!("{code}: {error}")),
    }
}

impl Member {
    /// Consumes the member until the run stops: receive a batch, record it,
    /// acknowledge its last position; a new session whenever one dies.
    pub fn run(&self, shared: &Shared, subscriptions: &Subscriptions) {
        let mut session: Option<Client> = None;
        while !shared.stopping() {
            let Some(client) = session.as_mut() else {
                session = shared.server.reconnect(Duration::from_secs(2));
                continue;
            };
            match self.one_batch(client) {
                Ok(0) => std::thread::sleep(Duration::from_millis(50)),
                Ok(_) => {}
                Err(Failure::Lost) => {
                    self.state.lock().unwrap().session_lost();
                    Counters::add(&shared.counters.lost_connections, 1);
                    session = None;
                }
                Err(Failure::Held) => {
                    Counters::add(&subscriptions.held, 1);
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(Failure::Unexpected(what)) => {
                    shared.anomaly(format!("consumer of member {}: {what}", self.number));
                    return;
                }
            }
        }
    }

    fn one_batch(&self, client: &mut Client) -> Result<usize, Failure> {
        let positions: Vec<i64> = client
            .query(
                "SELECT position FROM allsource.receive($1, $2, $3)",
                &[&CONSUMERS, &BATCH, &self.number],
            )
            .map_err(|e| classify(&e))?
            .iter()
            .map(|row| row.get(0))
            .collect();
        let Some(&last) = positions.last() else {
            return Ok(0);
        };
        self.state
            .lock()
            .unwrap()
            .receive(&positions)
            .map_err(Failure::Unexpected)?;
        client
            .execute(
                "SELECT allsource.ack($1, $2, $3)",
                &[&CONSUMERS, &last, &self.number],
            )
            .map_err(|e| classify(&e))?;
        self.state.lock().unwrap().acknowledged(last);
        Ok(positions.len())
    }
}

/// What the subscription checks found, for the log.
pub struct Report {
    /// The projection's checkpoint and the streams it covers.
    pub checkpoint: i64,
    pub streams: i64,
    pub applied: i64,
    /// Matching events the consumers were shown to have received.
    pub consumed: usize,
}

fn failed(e: postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!(
            "subscription query failed: {}: {}",
            db.code().code(),
            db.message()
        ),
        None => format!("subscription query failed: {e}"),
    }
}

fn query(
    client: &mut Client,
    sql: &str,
    params: &[&(dyn postgres::types::ToSql + Sync)],
) -> Result<Vec<postgres::Row>, String> {
    client.query(sql, params).map_err(failed)
}

/// Both checks. `all`: the projection's lag is 0, so it must hold every
/// committed event, not just those up to its checkpoint.
pub fn check(subs: &Subscriptions, client: &mut Client, all: bool) -> Result<Report, String> {
    let (checkpoint, streams, applied) = projection(subs, client, all)?;
    let consumed = consumers(subs, client)?;
    Ok(Report {
        checkpoint,
        streams,
        applied,
        consumed,
    })
}

/// The projection equals a fresh fold over `read_all` of the events up to its
/// checkpoint, and nothing is parked: every event was applied exactly once,
/// in per-stream order. The checkpoint and the projection are read in one
/// statement, so in one snapshot (the handler's effects and the checkpoint
/// commit together); `read_all` (READ COMMITTED only) reads later, but the
/// events up to the checkpoint were all committed before it moved there.
fn projection(
    subs: &Subscriptions,
    client: &mut Client,
    all: bool,
) -> Result<(i64, i64, i64), String> {
    let parked = query(
        client,
        "SELECT position, last_reason, count(*) OVER () FROM allsource.parked_events($1) LIMIT 1",
        &[&PROJECTION],
    )?;
    if let Some(first) = parked.first() {
        return Err(format!(
            "the projection's handler parked {} events, e.g. position {}: {}",
            first.get::<_, i64>(2),
            first.get::<_, i64>(0),
            first.get::<_, String>(1)
        ));
    }
    let rows = query(
        client,
        "WITH cp AS (
             SELECT m.checkpoint FROM allsource.subscriptions s JOIN allsource.subscription_members m USING (subscription_id)
             WHERE s.name = $3),
         projected AS (SELECT * FROM public.stress_projection WHERE events > 0),
         fold AS (
             SELECT stream_id, count(*) AS events,
                    sum(CASE jsonb_typeof(payload -> 'seq') WHEN 'number' THEN (payload ->> 'seq')::numeric ELSE 0 END) AS seq_sum,
                    max(version) AS last_version
             FROM allsource.read_all($1, 2147483647) WHERE $2 OR position <= (SELECT checkpoint FROM cp)
             GROUP BY stream_id),
         differences AS (
             SELECT coalesce(f.stream_id, p.stream) AS stream, f.events, p.events AS projected_events,
                    f.seq_sum::text, p.seq_sum::text AS projected_seq_sum, f.last_version, p.last_version AS projected_last_version
             FROM fold f FULL JOIN projected p ON p.stream = f.stream_id
             WHERE (f.events, f.seq_sum, f.last_version) IS DISTINCT FROM (p.events, p.seq_sum, p.last_version)
             LIMIT 1)
         SELECT (SELECT checkpoint FROM cp), (SELECT count(*) FROM fold), (SELECT sum(events) FROM fold)::bigint, d.*
         FROM (SELECT 1) one LEFT JOIN differences d ON true",
        &[&subs.start, &all, &PROJECTION],
    )?;
    let row = &rows[0];
    let checkpoint: i64 = row.get(0);
    if let Some(stream) = row.get::<_, Option<String>>(3) {
        return Err(format!(
            "the projection of stream {stream} differs from the fold of the log up to {}: \
             events {:?} vs {:?} projected, seq sum {:?} vs {:?}, last version {:?} vs {:?}",
            if all {
                "the end".to_string()
            } else {
                format!("its checkpoint {checkpoint}")
            },
            row.get::<_, Option<i64>>(4),
            row.get::<_, Option<i64>>(5),
            row.get::<_, Option<String>>(6),
            row.get::<_, Option<String>>(7),
            row.get::<_, Option<i64>>(8),
            row.get::<_, Option<i64>>(9),
        ));
    }
    Ok((
        checkpoint,
        row.get(1),
        row.get::<_, Option<i64>>(2).unwrap_or(0),
    ))
}

/// Each member's consumer received every matching event of the member from
/// the last check up to its last acknowledged position, and nothing else.
fn consumers(subs: &Subscriptions, client: &mut Client) -> Result<usize, String> {
    let mut consumed = 0;
    for member in &subs.members {
        let mut state = member.state.lock().unwrap();
        let expected: Vec<i64> = query(
            client,
            &format!(
                "SELECT position FROM allsource.events
                 WHERE position > $1 AND position <= $2 AND tenant_id IS NULL
                   AND event_type = ANY ({CONSUMED_TYPES}) AND allsource.partition_for(stream_id, {MEMBERS}) = $3
                 ORDER BY position"
            ),
            &[&state.verified, &state.acked, &member.number],
        )?
        .iter()
        .map(|row| row.get(0))
        .collect();
        let received: Vec<i64> = state
            .received
            .range(state.verified + 1..=state.acked)
            .copied()
            .collect();
        if expected != received {
            let missing = expected.iter().find(|p| !state.received.contains(p));
            let extra = received.iter().find(|p| expected.binary_search(p).is_err());
            return Err(format!(
                "the consumer of member {} up to its acknowledged position {}: {} matching events, {} received; \
                 first skipped {missing:?}, first not of the member {extra:?}",
                member.number,
                state.acked,
                expected.len(),
                received.len()
            ));
        }
        consumed += expected.len();
        state.verified = state.acked;
        let acked = state.acked;
        let above = state.received.split_off(&(acked + 1));
        state.received = above;
    }
    Ok(consumed)
}

/// Waits (the writers paused) until both subscriptions have no lag and each
/// consumer recorded the acknowledgement of its member's checkpoint.
pub fn wait_for_no_lag(
    subs: &Subscriptions,
    client: &mut Client,
    patience: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + patience;
    loop {
        let rows = query(
            client,
            "SELECT member, checkpoint, lag_events FROM allsource.subscriptions()
             WHERE name IN ($1, $2) ORDER BY name, member",
            &[&CONSUMERS, &PROJECTION],
        )?;
        let consumers_caught_up = rows.iter().take(subs.members.len()).all(|row| {
            let member: i32 = row.get(0);
            subs.members[member as usize].state.lock().unwrap().acked >= row.get::<_, i64>(1)
        });
        let lag: i64 = rows.iter().map(|row| row.get::<_, i64>(2)).sum();
        if lag == 0 && consumers_caught_up {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the subscriptions still lag {lag} events after {patience:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Lag (events) and parked events of each subscription, for the progress line.
pub fn lag(client: &mut Client) -> Result<String, String> {
    let rows = query(
        client,
        "SELECT name, sum(lag_events)::bigint, sum(parked)::bigint FROM allsource.subscriptions()
         WHERE name IN ($1, $2) GROUP BY name ORDER BY name",
        &[&CONSUMERS, &PROJECTION],
    )?;
    Ok(rows
        .iter()
        .map(|row| {
            format!(
                "{} lag {} parked {}",
                row.get::<_, String>(0),
                row.get::<_, i64>(1),
                row.get::<_, i64>(2)
            )
        })
        .collect::<Vec<_>>()
        .join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_what_a_dead_session_left_unacknowledged_may_come_again() {
        let mut state = MemberState::default();
        state.receive(&[1, 2, 3]).unwrap();
        state.acknowledged(3);
        assert!(state.receive(&[3]).is_err(), "acknowledged: never again");
        state.receive(&[5, 6]).unwrap();
        assert!(state.receive(&[6]).is_err(), "the session is alive");
        state.session_lost();
        state.receive(&[5, 6, 7]).unwrap();
        assert_eq!(state.duplicates, 2);
        state.acknowledged(7);
        assert!(state.may_repeat.is_empty() && state.in_flight.is_empty());
        assert!(state.receive(&[9, 8]).is_err(), "not ascending");
    }
}
