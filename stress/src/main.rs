//! allsource-stress: a mixed load against a real server for seconds or days,
//! crash-restarts on request, and checks that nothing acknowledged is lost.
//! See `--help` and docs/operations.md, "Stress and soak test".

mod check;
mod ledger;
mod reader;
mod server;
mod shared;
mod subscriber;
mod writer;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reader::Reader;
use server::{Fault, Server};
use shared::{Counters, Mix, Shared};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use subscriber::Subscriptions;

const USAGE: &str = "\
allsource-stress: a mixed load against AllSource, with crashes on request.

USAGE: allsource-stress [OPTIONS]

  --url URL              libpq connection string (default: $ALLSOURCE_STRESS_URL or
                         \"host=localhost user=postgres dbname=postgres\"); with
                         allsource.database set, it must name this database for enqueue
  --duration D           how long to run: 90s, 30m, 7d (default 2m)
  --writers N            writer sessions (default 64)
  --readers N            sessions following read_all and read_category (default 4)
  --hot-streams N        streams most writers fight over (default 10)
  --cold-streams N       streams written now and then (default 10000)
  --crashes N            crash-restarts spread over the run (default 0)
  --faults LIST          what a crash kills, in turn: postmaster,backend,worker,subscriber
                         (default all four; postmaster needs --pgdata and --pg-bin;
                         worker: an ingest worker, subscriber: a subscription worker)
  --pgdata DIR           the server's data directory (to restart it)
  --pg-bin DIR           the directory of pg_ctl
  --check-every D        also check this often without a crash (default 5m)
  --subscriptions on|off a handler subscription projecting into a table and 3 external
                         consumers of a 3-member subscription, checked with the rest
                         (default on; needs allsource.subscription_workers >= 1)
  --conflict-rate R      share of writes with an impossible expected version (0.05)
  --rollback-rate R      share of explicit transactions rolled back (0.03)
  --long-rate R          share of transactions held open 0.2-2 s (0.01)
  --max-memory-growth-mb N   a backend's private memory may grow this much (64)
  --seed N               random seed (default: from the clock)
";

struct Options {
    url: String,
    duration: Duration,
    writers: u16,
    readers: usize,
    hot: usize,
    cold: usize,
    crashes: u32,
    faults: Vec<Fault>,
    pgdata: Option<PathBuf>,
    pg_bin: Option<PathBuf>,
    check_every: Duration,
    subscriptions: bool,
    mix: Mix,
    max_memory_growth_kb: u64,
    seed: u64,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("bad duration {text:?}"))?;
    let seconds = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(format!("bad duration unit in {text:?}: use s, m, h or d")),
    };
    Ok(Duration::from_secs(number * seconds))
}

fn parse_args(args: impl Iterator<Item = String>) -> Result<Options, String> {
    let mut options = Options {
        url: std::env::var("ALLSOURCE_STRESS_URL")
            .unwrap_or_else(|_| "host=localhost user=postgres dbname=postgres".into()),
        duration: Duration::from_secs(120),
        writers: 64,
        readers: 4,
        hot: 10,
        cold: 10_000,
        crashes: 0,
        faults: vec![
            Fault::Postmaster,
            Fault::Backend,
            Fault::Worker,
            Fault::Subscriber,
        ],
        pgdata: None,
        pg_bin: None,
        check_every: Duration::from_secs(300),
        subscriptions: true,
        mix: Mix {
            conflict_rate: 0.05,
            rollback_rate: 0.03,
            long_rate: 0.01,
        },
        max_memory_growth_kb: 64 * 1024,
        seed: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
    };
    let mut args = args.peekable();
    while let Some(flag) = args.next() {
        if flag == "--help" || flag == "-h" {
            return Err(String::new());
        }
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        let number = |v: &str| {
            v.parse::<u64>()
                .map_err(|_| format!("{flag}: not a number: {v:?}"))
        };
        let rate = |v: &str| match v.parse::<f64>() {
            Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
            _ => Err(format!("{flag}: not a rate from 0 to 1: {v:?}")),
        };
        match flag.as_str() {
            "--url" => options.url = value,
            "--duration" => options.duration = parse_duration(&value)?,
            "--writers" => options.writers = number(&value)?.clamp(1, 1000) as u16,
            "--readers" => options.readers = number(&value)? as usize,
            "--hot-streams" => options.hot = number(&value)?.max(1) as usize,
            "--cold-streams" => options.cold = number(&value)?.max(1) as usize,
            "--crashes" => options.crashes = number(&value)? as u32,
            "--faults" => {
                options.faults = value
                    .split(',')
                    .map(Fault::parse)
                    .collect::<Result<_, _>>()?
            }
            "--pgdata" => options.pgdata = Some(value.into()),
            "--pg-bin" => options.pg_bin = Some(value.into()),
            "--check-every" => options.check_every = parse_duration(&value)?,
            "--subscriptions" => {
                options.subscriptions = match value.as_str() {
                    "on" => true,
                    "off" => false,
                    _ => return Err(format!("--subscriptions: on or off, not {value:?}")),
                }
            }
            "--conflict-rate" => options.mix.conflict_rate = rate(&value)?,
            "--rollback-rate" => options.mix.rollback_rate = rate(&value)?,
            "--long-rate" => options.mix.long_rate = rate(&value)?,
            "--max-memory-growth-mb" => options.max_memory_growth_kb = number(&value)? * 1024,
            "--seed" => options.seed = number(&value)?,
            other => return Err(format!("unknown option {other}")),
        }
    }
    if options.crashes > 0
        && options.faults.contains(&Fault::Postmaster)
        && (options.pgdata.is_none() || options.pg_bin.is_none())
    {
        return Err(
            "killing the postmaster needs --pgdata and --pg-bin (or --faults backend,worker)"
                .into(),
        );
    }
    Ok(options)
}

fn main() {
    let options = match parse_args(std::env::args().skip(1)) {
        Ok(options) => options,
        Err(message) if message.is_empty() => {
            print!("{USAGE}");
            return;
        }
        Err(message) => {
            eprintln!("allsource-stress: {message}\n\n{USAGE}");
            std::process::exit(2);
        }
    };
    match run(&options) {
        Ok(()) => {}
        Err(message) => {
            eprintln!("allsource-stress: FAILED: {message}");
            std::process::exit(1);
        }
    }
}

/// Creates the extension if needed and makes sure the queue serves this
/// database; creates the subscriptions (and checks their workers run here).
fn prepare(server: &Server, subscriptions: bool) -> Result<Option<Subscriptions>, String> {
    let mut client = server
        .connect()
        .map_err(|e| format!("cannot connect to {:?}: {e}", server.url))?;
    client
        .batch_execute("CREATE EXTENSION IF NOT EXISTS allsource")
        .map_err(|e| format!("CREATE EXTENSION allsource: {e}"))?;
    // Its long transactions hold streams for up to 2 s, which the queue also
    // writes: a worker that waits longer keeps every ticket committed, which
    // is what this run checks (a shorter wait rejects them with 55P03).
    // Two statements: ALTER SYSTEM cannot run in the implicit transaction of a
    // multi-statement query.
    for sql in [
        "ALTER SYSTEM SET allsource.ingest_lock_timeout_ms = '5s'",
        "SELECT pg_reload_conf()",
    ] {
        client
            .batch_execute(sql)
            .map_err(|e| format!("setting allsource.ingest_lock_timeout_ms: {e}"))?;
    }
    // The workers take it when they next wake, well within a second.
    std::thread::sleep(Duration::from_secs(1));
    let workers: i64 = client
        .query_one("SELECT count(*) FROM allsource.ingest_workers()", &[])
        .map_err(|e| format!("the stress run needs shared_preload_libraries = 'allsource': {e}"))?
        .get(0);
    client
        .query_one(
            "SELECT allsource.enqueue('stress-probe', 'Probe', '{}')",
            &[],
        )
        .map_err(|e| format!("enqueue does not work in this database ({workers} workers): {e}"))?;
    if !subscriptions {
        return Ok(None);
    }
    // The launcher starts them within seconds of the extension's creation.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let handlers = loop {
        let handlers: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'allsource subscription worker' \
                 AND datname = current_database()",
                &[],
            )
            .map_err(|e| format!("looking for the subscription workers: {e}"))?
            .get(0);
        if handlers > 0 || std::time::Instant::now() > deadline {
            break handlers;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    if handlers == 0 {
        return Err(
            "no subscription worker runs in this database: set allsource.subscription_workers \
                    (or run with --subscriptions off)"
                .into(),
        );
    }
    subscriber::prepare(&mut client).map(Some)
}

fn run(options: &Options) -> Result<(), String> {
    let server = Server {
        url: options.url.clone(),
        pgdata: options.pgdata.clone(),
        pg_bin: options.pg_bin.clone(),
    };
    let subscriptions = prepare(&server, options.subscriptions)?;
    let mut streams: Vec<String> = (0..options.hot).map(|i| format!("hot-{i}")).collect();
    streams.extend((0..options.cold).map(|i| format!("cold-{i}")));
    let readers = (0..options.readers)
        .map(|i| Reader::new(i + 1, (i % 2 == 1).then(|| "hot".to_string())))
        .collect();
    let shared = Shared::new(
        server,
        options.seed,
        streams,
        options.hot,
        Mix { ..options.mix },
        readers,
        subscriptions,
    );
    println!(
        "allsource-stress: {} writers, {} readers, {} hot + {} cold streams, {:?}, {} crash-restarts ({:?}), seed {}",
        options.writers, options.readers, options.hot, options.cold, options.duration, options.crashes, options.faults, options.seed
    );
    let outcome = std::thread::scope(|scope| {
        for id in 0..options.writers {
            let shared = &shared;
            scope.spawn(move || writer::Writer::new(shared, id, options.seed).run());
        }
        for reader in &shared.readers {
            let shared = &shared;
            scope.spawn(move || reader.run(shared));
        }
        if let Some(subscriptions) = &shared.subscriptions {
            for member in &subscriptions.members {
                let shared = &shared;
                scope.spawn(move || member.run(shared, subscriptions));
            }
        }
        let outcome = conduct(&shared, options);
        if let Err(message) = &outcome {
            shared.anomaly(message.clone());
        }
        shared.stop();
        outcome
    });
    outcome?;
    if let Some(anomaly) = shared.first_anomaly() {
        return Err(anomaly);
    }
    Ok(())
}

/// Progress, faults and checks until the time is up; then the final check.
fn conduct(shared: &Shared, options: &Options) -> Result<(), String> {
    let started = Instant::now();
    let crash_times = crash_times(options);
    let mut crashes_done = 0;
    let mut next_check = options.check_every;
    let mut checks = 0;
    let mut checked_positions = 0;
    let mut last_progress = (Instant::now(), 0u64);
    let mut memory = Memory::default();
    let mut first_bytes_per_event = None;
    let mut monitor = None;
    let last_report = loop {
        std::thread::sleep(Duration::from_millis(500));
        if let Some(anomaly) = shared.first_anomaly() {
            return Err(anomaly);
        }
        let elapsed = started.elapsed();
        memory.sample(shared, elapsed);
        if last_progress.0.elapsed() >= Duration::from_secs(5) {
            last_progress = progress(
                shared,
                elapsed,
                last_progress,
                crashes_done,
                options.crashes,
                checks,
                &mut monitor,
            );
        }
        let finished = elapsed >= options.duration;
        let crash_due = crash_times
            .get(crashes_done as usize)
            .is_some_and(|&at| elapsed >= at);
        if !finished && !crash_due && elapsed < next_check {
            continue;
        }
        if crash_due && !finished {
            let fault = options.faults[crashes_done as usize % options.faults.len()];
            memory.end_of_lifetime();
            let pid = shared.server.inject(fault)?;
            crashes_done += 1;
            println!(
                "[{:>6.0}s] crash {crashes_done}/{}: kill -9 of the {fault:?} (pid {pid})",
                elapsed.as_secs_f64(),
                options.crashes
            );
        }
        let (report, subscriptions) = paused_check(shared, &mut checked_positions, finished)?;
        checks += 1;
        next_check = started.elapsed() + options.check_every;
        first_bytes_per_event.get_or_insert(report.bytes_per_event);
        println!(
            "[{:>6.0}s] check {checks} passed: {} acknowledged events verified, in doubt {} present / {} absent, {} refused absent, verify_all clean, {} events, {:.0} bytes/event on disk",
            started.elapsed().as_secs_f64(),
            report.verified,
            report.in_doubt_present,
            report.in_doubt_absent,
            report.refused,
            report.events,
            report.bytes_per_event
        );
        if let Some(s) = &subscriptions {
            println!(
                "[{:>6.0}s]   subscriptions: the projection of {} events in {} streams equals the fold of read_all up to {}, none parked; the consumers received all {} matching events up to their acks",
                started.elapsed().as_secs_f64(),
                s.applied,
                s.streams,
                if finished { "the watermark (lag 0)".to_string() } else { format!("its checkpoint {}", s.checkpoint) },
                s.consumed
            );
        }
        if finished {
            break (report, subscriptions);
        }
    };
    memory.end_of_lifetime();
    summary(
        shared,
        started.elapsed(),
        crashes_done,
        checks,
        &memory,
        first_bytes_per_event,
        &last_report,
    );
    memory.check(options.max_memory_growth_kb)?;
    println!("  anomalies: 0");
    Ok(())
}

/// Random times, one in each of `crashes` equal slots of the run after the
/// first slot (so the load is up before the first crash).
fn crash_times(options: &Options) -> Vec<Duration> {
    let mut rng = StdRng::seed_from_u64(options.seed);
    let slot = options.duration / (options.crashes + 1);
    (1..=options.crashes)
        .map(|k| slot * k + slot.mul_f64(rng.gen_range(0.0..0.9)))
        .collect()
}

/// Waits for the server, pauses the writers and checks. A session lost
/// during the check (the crash-restart it follows may still be under way)
/// means checking again: a check changes nothing until it passes. At the
/// end, the subscriptions are first given time to catch up (lag 0).
fn paused_check(
    shared: &Shared,
    checked_positions: &mut i64,
    finished: bool,
) -> Result<(check::Report, Option<subscriber::Report>), String> {
    let _paused = shared.gate.write().unwrap();
    for _ in 0..10 {
        let mut client = shared
            .server
            .reconnect(Duration::from_secs(300))
            .ok_or("the server did not come back within 5 minutes")?;
        let outcome = check::check(shared, &mut client, checked_positions).and_then(|report| {
            let Some(subscriptions) = &shared.subscriptions else {
                return Ok((report, None));
            };
            if finished {
                subscriber::wait_for_no_lag(subscriptions, &mut client, Duration::from_secs(600))?;
            }
            let s = subscriber::check(subscriptions, &mut client, finished)?;
            Ok((report, Some(s)))
        });
        match outcome {
            Err(_) if client.is_closed() => std::thread::sleep(Duration::from_secs(1)),
            outcome => return outcome,
        }
    }
    Err("the check lost its session 10 times in a row".into())
}

fn progress(
    shared: &Shared,
    elapsed: Duration,
    last: (Instant, u64),
    crashes: u32,
    planned: u32,
    checks: u32,
    monitor: &mut Option<postgres::Client>,
) -> (Instant, u64) {
    let acked = shared.ledger.lock().unwrap().acked_total;
    let rate = (acked - last.1) as f64 / last.0.elapsed().as_secs_f64();
    let lag = shared
        .readers
        .iter()
        .map(|r| {
            let p = r.progress.lock().unwrap();
            (p.watermark - p.cursor).max(0)
        })
        .max()
        .unwrap_or(0);
    let c = &shared.counters;
    let ledger = shared.ledger.lock().unwrap();
    println!(
        "[{:>6.0}s] {rate:>7.0} ev/s  acked {acked}  conflicts {}  rollbacks {}  deadlocks {}  queue full {}  lost sessions {}  in doubt {}  reader lag {lag} positions  crashes {crashes}/{planned}  checks {checks}",
        elapsed.as_secs_f64(),
        Counters::get(&c.conflicts),
        Counters::get(&c.rollbacks),
        Counters::get(&c.deadlocks),
        Counters::get(&c.queue_full),
        Counters::get(&c.lost_connections),
        ledger.in_doubt.len(),
    );
    if let Some(subscriptions) = &shared.subscriptions {
        println!(
            "          subscriptions: {}; consumers received {} (duplicates {}), acked up to {:?}, member held {}",
            subscription_lag(shared, monitor),
            subscriptions.members.iter().map(|m| m.state.lock().unwrap().received_total).sum::<u64>(),
            subscriptions.members.iter().map(|m| m.state.lock().unwrap().duplicates).sum::<u64>(),
            subscriptions.members.iter().map(|m| m.state.lock().unwrap().acked).collect::<Vec<_>>(),
            Counters::get(&subscriptions.held),
        );
    }
    (Instant::now(), acked)
}

/// The subscriptions' lag and parked events, from a session kept for it
/// (opened again after a crash; a slow answer is given up after 3 s).
fn subscription_lag(shared: &Shared, monitor: &mut Option<postgres::Client>) -> String {
    if monitor.is_none() {
        *monitor = shared.server.connect().ok().and_then(|mut client| {
            client
                .batch_execute("SET statement_timeout = '3s'")
                .ok()
                .map(|()| client)
        });
    }
    let Some(client) = monitor.as_mut() else {
        return "lag unknown (no session)".into();
    };
    match subscriber::lag(client) {
        Ok(lag) => lag,
        Err(e) => {
            if client.is_closed() {
                *monitor = None;
            }
            format!("lag unknown ({e})")
        }
    }
}

/// Private memory of writer 0's backend: after warm-up and at the end of
/// each of its lifetimes (a crash ends it).
#[derive(Default)]
struct Memory {
    pid: i32,
    since: Duration,
    first_kb: Option<u64>,
    last_kb: Option<u64>,
    /// (after warm-up, at the end) per backend lifetime.
    lifetimes: Vec<(u64, u64)>,
}

impl Memory {
    fn sample(&mut self, shared: &Shared, elapsed: Duration) {
        let pid = shared.probe_pid.load(std::sync::atomic::Ordering::Relaxed);
        if pid != self.pid {
            self.end_of_lifetime();
            self.pid = pid;
            self.since = elapsed;
        }
        // Caches (catalog, plans) fill in the first seconds: measure after.
        if elapsed < self.since + Duration::from_secs(10) {
            return;
        }
        if let Some(kb) = server::private_memory_kb(pid) {
            self.first_kb.get_or_insert(kb);
            self.last_kb = Some(kb);
        }
    }

    fn end_of_lifetime(&mut self) {
        if let (Some(first), Some(last)) = (self.first_kb.take(), self.last_kb.take()) {
            self.lifetimes.push((first, last));
        }
        self.pid = 0;
    }

    fn check(&self, allowed_kb: u64) -> Result<(), String> {
        match self
            .lifetimes
            .iter()
            .find(|(first, last)| last.saturating_sub(*first) > allowed_kb)
        {
            Some((first, last)) => Err(format!(
                "a backend's private memory grew from {first} kB to {last} kB"
            )),
            None => Ok(()),
        }
    }
}

fn summary(
    shared: &Shared,
    elapsed: Duration,
    crashes: u32,
    checks: u32,
    memory: &Memory,
    first_bytes_per_event: Option<f64>,
    last: &(check::Report, Option<subscriber::Report>),
) {
    let ledger = shared.ledger.lock().unwrap();
    let c = &shared.counters;
    println!("\nsummary after {:.0} s", elapsed.as_secs_f64());
    println!(
        "  acknowledged events:   {} ({:.0}/s), all present with their content",
        ledger.acked_total,
        ledger.acked_total as f64 / elapsed.as_secs_f64()
    );
    println!(
        "  in doubt (lost session): {}, {} of them stored (intact)",
        ledger.in_doubt_total, ledger.in_doubt_present
    );
    println!(
        "  refused or rolled back:  {} events, none stored",
        ledger.absent_total
    );
    println!(
        "  conflicts {}  rollbacks {}  deadlocks {}  long transactions {}  tickets {}  queue full {}  lost sessions {}",
        Counters::get(&c.conflicts),
        Counters::get(&c.rollbacks),
        Counters::get(&c.deadlocks),
        Counters::get(&c.long_transactions),
        Counters::get(&c.tickets),
        Counters::get(&c.queue_full),
        Counters::get(&c.lost_connections)
    );
    for reader in &shared.readers {
        let progress = reader.progress.lock().unwrap();
        println!(
            "  {}: {} events, up to position {}, each once",
            reader.name(),
            progress.events,
            progress.cursor
        );
    }
    if let Some(subscriptions) = &shared.subscriptions {
        println!(
            "  projection (handler subscription): {} events in {} streams, each applied once in stream order, none parked",
            last.1.as_ref().map_or(0, |s| s.applied),
            last.1.as_ref().map_or(0, |s| s.streams)
        );
        for member in &subscriptions.members {
            let state = member.state.lock().unwrap();
            println!(
                "  consumer of member {}: {} received, {} of them again after a lost session, acked up to {}, none skipped",
                member.number, state.received_total, state.duplicates, state.acked
            );
        }
        println!(
            "  consumers refused a member still held (55006): {}",
            Counters::get(&subscriptions.held)
        );
    }
    println!("  crashes survived: {crashes}; checks passed: {checks}");
    for (i, (first, last)) in memory.lifetimes.iter().enumerate() {
        println!("  backend memory (writer 0, private), lifetime {}: {first} kB after warm-up, {last} kB at the end", i + 1);
    }
    if let Some(first) = first_bytes_per_event {
        println!(
            "  disk: {first:.0} bytes/event at the first check, {:.0} at the last ({} events)",
            last.0.bytes_per_event, last.0.events
        );
    }
}
