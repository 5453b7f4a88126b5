//! A writer: one session doing a random mix of `append`, `append_batch`,
//! `enqueue` + `await_ticket`, explicit transactions that commit (some held
//! open for seconds) or roll back, and deliberate expected-version conflicts.
//! Every outcome goes into the ledger.

use crate::ledger::{Acked, Key};
use crate::shared::{Counters, Shared};
use postgres::Client;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::time::Duration;

/// Why an operation did not succeed.
enum Failure {
    /// The session is gone (server crash, restart, killed backend).
    Lost,
    Conflict,
    Deadlock,
    QueueFull,
    /// A ticket of a queue that a restart has since recreated.
    TicketGone,
    /// Anything else: the run stops.
    Unexpected(String),
}

fn classify(error: &postgres::Error) -> Failure {
    let Some(db) = error.as_db_error() else {
        return Failure::Lost;
    };
    match db.code().code() {
        // admin shutdown, crash shutdown, cannot connect now, connection failures
        "57P01" | "57P02" | "57P03" | "08000" | "08003" | "08006" => Failure::Lost,
        "ZA001" => Failure::Conflict,
        "40P01" => Failure::Deadlock,
        "53400" => Failure::QueueFull,
        "22023" if db.message().contains("ticket") => Failure::TicketGone,
        code => Failure::Unexpected(format!("{code}: {}", db.message())),
    }
}

pub struct Writer<'a> {
    shared: &'a Shared,
    id: u16,
    seq: u32,
    rng: StdRng,
}

impl<'a> Writer<'a> {
    pub fn new(shared: &'a Shared, id: u16, seed: u64) -> Self {
        Writer {
            shared,
            id,
            seq: 0,
            rng: StdRng::seed_from_u64(seed ^ u64::from(id).wrapping_mul(0x9E37_79B9_7F4A_7C15)),
        }
    }

    pub fn run(mut self) {
        let mut session: Option<Client> = None;
        while !self.shared.stopping() {
            let _open = self.shared.gate.read().unwrap();
            if session.is_none() {
                session = self.shared.server.reconnect(Duration::from_secs(2));
                if let (Some(client), 0) = (session.as_mut(), self.id) {
                    if let Ok(row) = client.query_one("SELECT pg_backend_pid()", &[]) {
                        self.shared
                            .probe_pid
                            .store(row.get(0), std::sync::atomic::Ordering::Relaxed);
                    }
                }
                continue;
            }
            let client = session.as_mut().expect("connected above");
            if let Err(failure) = self.one_operation(client) {
                match failure {
                    Failure::Lost => {
                        Counters::add(&self.shared.counters.lost_connections, 1);
                        session = None;
                    }
                    Failure::Unexpected(what) => self
                        .shared
                        .anomaly(format!("writer {}: unexpected error {what}", self.id)),
                    _ => {}
                }
            }
        }
    }

    fn next_key(&mut self) -> Key {
        self.seq += 1;
        Key {
            writer: self.id,
            seq: self.seq,
        }
    }

    fn pick_stream(&mut self) -> u32 {
        let index = if self.rng.gen_bool(0.3) {
            self.rng.gen_range(0..self.shared.hot)
        } else {
            self.rng
                .gen_range(self.shared.hot..self.shared.streams.len())
        };
        index as u32
    }

    fn one_operation(&mut self, client: &mut Client) -> Result<(), Failure> {
        let mix = &self.shared.mix;
        let roll: f64 = self.rng.gen();
        if roll < mix.rollback_rate {
            self.transaction(client, false, false)
        } else if roll < mix.rollback_rate + mix.long_rate {
            self.transaction(client, true, true)
        } else {
            match self.rng.gen_range(0..10) {
                0..=3 => self.append(client),
                4..=5 => self.append_batch(client),
                6..=7 => self.enqueue(client, 1),
                8 => {
                    let pipelined = self.rng.gen_range(2..=20);
                    self.enqueue(client, pipelined)
                }
                _ => self.transaction(client, true, false),
            }
        }
    }

    /// An expected version: mostly none, sometimes one that cannot hold.
    fn expected_version(&mut self) -> (Option<i64>, bool) {
        if self.rng.gen_bool(self.shared.mix.conflict_rate) {
            (Some(1_000_000_000 + self.rng.gen_range(0..1000)), true)
        } else {
            (None, false)
        }
    }

    fn append(&mut self, client: &mut Client) -> Result<(), Failure> {
        let stream = self.pick_stream();
        let key = self.next_key();
        let (expected, impossible) = self.expected_version();
        let result = append_one(client, self.shared, stream, key, expected);
        match result {
            Ok(_) if impossible => Err(Failure::Unexpected(format!(
                "append with impossible expected version {expected:?} succeeded"
            ))),
            Ok(acked) => {
                self.shared.ledger.lock().unwrap().acknowledge([acked]);
                Ok(())
            }
            Err(failure) => Err(self.settle_failure(failure, &[(stream, key)], true)),
        }
    }

    fn append_batch(&mut self, client: &mut Client) -> Result<(), Failure> {
        let stream = self.pick_stream();
        let count = self.rng.gen_range(2..=10);
        let keys: Vec<Key> = (0..count).map(|_| self.next_key()).collect();
        let (expected, impossible) = self.expected_version();
        let run = self.shared.run;
        let events: Vec<Value> = keys
            .iter()
            .map(|key| {
                let mut event = json!({"type": key.event_type(), "payload": key.payload(), "id": key.event_id(run).to_string()});
                if let Some(metadata) = key.metadata() {
                    event["metadata"] = metadata;
                }
                event
            })
            .collect();
        let result = client.query_one(
            "SELECT first_version, last_version, first_position, last_position \
             FROM allsource.append_batch($1, $2, $3)",
            &[
                &self.shared.streams[stream as usize],
                &Value::Array(events),
                &expected,
            ],
        );
        let pairs: Vec<(u32, Key)> = keys.iter().map(|key| (stream, *key)).collect();
        match result {
            Ok(_) if impossible => Err(Failure::Unexpected(
                "append_batch with an impossible expected version succeeded".into(),
            )),
            Ok(row) => {
                let (first_version, first_position, last_position): (i64, i64, i64) =
                    (row.get(0), row.get(2), row.get(3));
                let last = keys.len() - 1;
                let acked = keys.iter().enumerate().map(|(i, key)| Acked {
                    stream,
                    version: first_version + i as i64,
                    position: match i {
                        0 => Some(first_position),
                        i if i == last => Some(last_position),
                        _ => None,
                    },
                    key: *key,
                });
                self.shared.ledger.lock().unwrap().acknowledge(acked);
                Ok(())
            }
            Err(error) => Err(self.settle_failure(classify(&error), &pairs, true)),
        }
    }

    /// `count` events enqueued, then every ticket awaited.
    fn enqueue(&mut self, client: &mut Client, count: usize) -> Result<(), Failure> {
        let mut tickets = Vec::with_capacity(count);
        for _ in 0..count {
            let stream = self.pick_stream();
            let key = self.next_key();
            let (expected, impossible) = self.expected_version();
            let result = client.query_one(
                "SELECT allsource.enqueue($1, $2, $3, $4, $5, $6)",
                &[
                    &self.shared.streams[stream as usize],
                    &key.event_type(),
                    &key.payload(),
                    &key.metadata(),
                    &expected,
                    &key.event_id(self.shared.run),
                ],
            );
            match result {
                Ok(row) => tickets.push((row.get::<_, i64>(0), stream, key, impossible)),
                Err(error) => {
                    let failure = classify(&error);
                    let queued: Vec<(u32, Key)> = tickets.iter().map(|t| (t.1, t.2)).collect();
                    if matches!(failure, Failure::Lost) {
                        // The queued ones may still commit; this one too.
                        let mut ledger = self.shared.ledger.lock().unwrap();
                        ledger.doubt(queued);
                        ledger.doubt([(stream, key)]);
                        return Err(failure);
                    }
                    if matches!(failure, Failure::QueueFull) {
                        Counters::add(&self.shared.counters.queue_full, 1);
                        self.shared.ledger.lock().unwrap().refuse([key]);
                        break;
                    }
                    self.shared.ledger.lock().unwrap().doubt(queued);
                    return Err(failure);
                }
            }
        }
        Counters::add(&self.shared.counters.tickets, tickets.len() as u64);
        for (index, &(ticket, stream, key, impossible)) in tickets.iter().enumerate() {
            let result = client.query_one(
                "SELECT status, version, position FROM allsource.await_ticket($1, 60000)",
                &[&ticket],
            );
            let row = match result {
                Ok(row) => row,
                Err(error) => {
                    let unsettled = tickets[index..].iter().map(|t| (t.1, t.2));
                    self.shared.ledger.lock().unwrap().doubt(unsettled);
                    return Err(match classify(&error) {
                        Failure::TicketGone => Failure::Lost,
                        other => other,
                    });
                }
            };
            let status: String = row.get(0);
            match (status.as_str(), impossible) {
                ("committed", false) => {
                    let acked = Acked {
                        stream,
                        version: row.get(1),
                        position: Some(row.get(2)),
                        key,
                    };
                    self.shared.ledger.lock().unwrap().acknowledge([acked]);
                }
                ("conflict", _) => {
                    Counters::add(&self.shared.counters.conflicts, 1);
                    self.shared.ledger.lock().unwrap().refuse([key]);
                }
                (status, _) => {
                    return Err(Failure::Unexpected(format!(
                        "ticket {ticket} ({}, expected version impossible: {impossible}) reported {status}",
                        self.shared.streams[stream as usize]
                    )))
                }
            }
        }
        Ok(())
    }

    /// An explicit transaction appending to one or two streams; held open
    /// for a while when `long`; committed or rolled back.
    fn transaction(
        &mut self,
        client: &mut Client,
        commit: bool,
        long: bool,
    ) -> Result<(), Failure> {
        let streams: Vec<u32> = (0..self.rng.gen_range(1..=2))
            .map(|_| self.pick_stream())
            .collect();
        let mut written: Vec<(u32, Key)> = Vec::new();
        let mut acked = Vec::new();
        let body = (|| {
            client.batch_execute("BEGIN").map_err(|e| classify(&e))?;
            for &stream in &streams {
                let key = self.next_key();
                written.push((stream, key));
                acked.push(append_one(client, self.shared, stream, key, None)?);
            }
            if long {
                Counters::add(&self.shared.counters.long_transactions, 1);
                std::thread::sleep(Duration::from_millis(self.rng.gen_range(200..2000)));
            }
            Ok(())
        })();
        let keys = || written.iter().map(|(_, key)| *key);
        if let Err(failure) = body {
            // Not committed: a lost session or an error means the server rolled it back.
            let _ = client.batch_execute("ROLLBACK");
            self.shared.ledger.lock().unwrap().refuse(keys());
            if matches!(failure, Failure::Deadlock) {
                Counters::add(&self.shared.counters.deadlocks, 1);
                return Ok(());
            }
            return Err(failure);
        }
        if !commit {
            let result = client.batch_execute("ROLLBACK");
            self.shared.ledger.lock().unwrap().refuse(keys());
            Counters::add(&self.shared.counters.rollbacks, 1);
            return result.map_err(|e| classify(&e));
        }
        match client.batch_execute("COMMIT") {
            Ok(()) => {
                self.shared.ledger.lock().unwrap().acknowledge(acked);
                Ok(())
            }
            Err(error) => Err(self.settle_failure(classify(&error), &written, false)),
        }
    }

    /// Ledger entries for an operation that failed; `counted`: conflicts are
    /// counted here (not for COMMIT, which cannot conflict).
    fn settle_failure(&self, failure: Failure, events: &[(u32, Key)], counted: bool) -> Failure {
        let mut ledger = self.shared.ledger.lock().unwrap();
        match failure {
            Failure::Lost => ledger.doubt(events.iter().copied()),
            Failure::Conflict | Failure::Deadlock => {
                if counted {
                    Counters::add(&self.shared.counters.conflicts, 1);
                }
                ledger.refuse(events.iter().map(|(_, key)| *key));
            }
            _ => {}
        }
        failure
    }
}

/// `allsource.append` of the event `key` to `stream`.
fn append_one(
    client: &mut Client,
    shared: &Shared,
    stream: u32,
    key: Key,
    expected: Option<i64>,
) -> Result<Acked, Failure> {
    let row = client
        .query_one(
            "SELECT version, position FROM allsource.append($1, $2, $3, $4, $5, $6)",
            &[
                &shared.streams[stream as usize],
                &key.event_type(),
                &key.payload(),
                &key.metadata(),
                &expected,
                &key.event_id(shared.run),
            ],
        )
        .map_err(|e| classify(&e))?;
    Ok(Acked {
        stream,
        version: row.get(0),
        position: Some(row.get(1)),
        key,
    })
}
