//! Dynamic consistency boundaries through a real driver: tags, read_query,
//! query_head and append_if under contention, kill -9s, tenants and
//! subscriptions. The crash_ test restarts the server, so scripts/test.sh
//! runs it alone.

use crate::crash::kill_9;
use crate::{reconnect_to, sqlstate, TestDb};
use postgres::{Client, GenericClient, IsolationLevel, Statement};
use rand::Rng;
use serde_json::{json, Value};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

/// `allsource.append_if` → (first_position, last_position).
fn append_if(
    client: &mut impl GenericClient,
    events: &Value,
    condition: Option<&Value>,
    after: Option<i64>,
) -> Result<(i64, i64), postgres::Error> {
    let row = client.query_one(
        "SELECT first_position, last_position FROM allsource.append_if($1::jsonb, $2::jsonb, $3::bigint)",
        &[events, &condition, &after],
    )?;
    Ok((row.get(0), row.get(1)))
}

fn query_head(client: &mut impl GenericClient, query: Option<&Value>) -> i64 {
    client
        .query_one("SELECT allsource.query_head($1::jsonb)", &[&query])
        .unwrap()
        .get(0)
}

/// One event of `kind` with `tags`, as append_if takes it.
fn tagged(kind: &str, payload: Value, tags: &[&str]) -> Value {
    json!([{"type": kind, "payload": payload, "tags": tags}])
}

/// A condition on one tag.
fn on_tag(tag: &str) -> Value {
    json!([{ "tags": [tag] }])
}

/// The numbers a message names right after "position ".
fn positions_named(message: &str) -> Vec<i64> {
    message
        .split("position ")
        .skip(1)
        .filter_map(|rest| {
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
        .collect()
}

/// Asserts `result` is a ZA004 naming `position`.
fn assert_conflict_at(result: Result<(i64, i64), postgres::Error>, position: i64, what: &str) {
    let error = match result {
        Ok(appended) => panic!("{what}: appended {appended:?} instead of ZA004"),
        Err(e) => e,
    };
    assert_eq!(sqlstate(&error), "ZA004", "{what}: {error}");
    let message = error.as_db_error().unwrap().message().to_string();
    assert!(
        positions_named(&message).contains(&position),
        "{what}: the message names position {position}: {message}"
    );
}

/// Asserts `result` failed with `state`.
fn assert_fails<T: std::fmt::Debug>(result: Result<T, postgres::Error>, state: &str, what: &str) {
    match result {
        Ok(value) => panic!("{what}: returned {value:?} instead of {state}"),
        Err(e) => assert_eq!(sqlstate(&e), state, "{what}: {e}"),
    }
}

/// The connection died with the server (57P01/57P02/57P03, 08xxx, or no
/// server error at all: the socket is gone).
fn lost(error: &postgres::Error) -> bool {
    error.code().is_none_or(|c| {
        let code = c.code();
        code.starts_with("57P") || code.starts_with("08")
    })
}

const COURSES: usize = 20;
const STUDENTS: usize = 60;
const MAX_COURSES_PER_STUDENT: i64 = 3;
const WORKERS: usize = 8;
const DECISIONS: u64 = 20_000;
// Courses fill after a few hundred decisions; a new term (fresh courses and
// students) every this many keeps appends and conflicts going through the run.
const DECISIONS_PER_TERM: u64 = 1_000;
const TERMS: u64 = DECISIONS / DECISIONS_PER_TERM;
const KILLS: u64 = 3;

enum Decision {
    Appended(i64),
    RolledBack,
    Refused,
}

#[derive(Default)]
struct Tally {
    decisions: u64,
    appended: u64,
    rolled_back: u64,
    refused: u64,
    conflicts: u64,
    reconnects: u64,
    /// (first_position, course tag, student tag) of each acknowledged commit.
    acknowledged: Vec<(i64, String, String)>,
}

/// A worker's connection, its statements prepared once: fewer round trips.
struct Session {
    client: Client,
    head: Statement,
    read: Statement,
    append: Statement,
}

impl Session {
    /// Connects, retrying while the server comes back from a kill.
    fn open(database: &str) -> Session {
        loop {
            let mut client = reconnect_to(database);
            let prepared = (|| {
                Ok::<_, postgres::Error>((
                    client.prepare("SELECT allsource.query_head($1::jsonb)")?,
                    client.prepare(
                        "SELECT event_type, payload, tags FROM allsource.read_query($1::jsonb, 0, 100000)",
                    )?,
                    client.prepare(
                        "SELECT first_position FROM allsource.append_if($1::jsonb, $2::jsonb, $3::bigint)",
                    )?,
                ))
            })();
            match prepared {
                Ok((head, read, append)) => {
                    return Session {
                        client,
                        head,
                        read,
                        append,
                    }
                }
                Err(e) if lost(&e) => continue,
                Err(e) => panic!("prepare: {e}"),
            }
        }
    }
}

/// The course example of the contract: read the boundary, decide, append_if.
fn decide(
    session: &mut Session,
    course: &str,
    student: &str,
    rng: &mut impl Rng,
) -> Result<Decision, postgres::Error> {
    let query = json!([
        {"types": ["CourseDefined", "CourseCapacityChanged", "StudentSubscribed"], "tags": [course]},
        {"types": ["StudentSubscribed"], "tags": [student]}
    ]);
    let mut tx = session
        .client
        .build_transaction()
        .isolation_level(IsolationLevel::ReadCommitted)
        .start()?;
    let head: i64 = tx.query_one(&session.head, &[&query])?.get(0);
    let rows = tx.query(&session.read, &[&query])?;
    let (mut capacity, mut in_course, mut of_student, mut already) = (None, 0, 0, false);
    for row in rows {
        let kind: String = row.get(0);
        let payload: Value = row.get(1);
        let tags: Vec<String> = row.get::<_, Option<Vec<String>>>(2).unwrap_or_default();
        let has = |tag: &str| tags.iter().any(|t| t == tag);
        match kind.as_str() {
            "CourseDefined" | "CourseCapacityChanged" if has(course) => {
                capacity = payload["capacity"].as_i64()
            }
            "StudentSubscribed" if has(course) || has(student) => {
                in_course += i64::from(has(course));
                of_student += i64::from(has(student));
                already |= has(course) && has(student);
            }
            _ => panic!("read_query({query}) returned {kind} {tags:?}, which it does not match"),
        }
    }
    let capacity =
        capacity.unwrap_or_else(|| panic!("read_query({query}) lost {course}'s definition"));
    if already || in_course >= capacity || of_student >= MAX_COURSES_PER_STUDENT {
        tx.commit()?;
        return Ok(Decision::Refused);
    }
    let event = tagged(
        "StudentSubscribed",
        json!({"course": course, "student": student}),
        &[course, student],
    );
    let first: i64 = tx
        .query_one(&session.append, &[&event, &query, &head])?
        .get(0);
    if rng.gen_bool(0.1) {
        thread::sleep(Duration::from_micros(rng.gen_range(0..=5_000)));
    }
    if rng.gen_bool(0.05) {
        tx.rollback()?;
        return Ok(Decision::RolledBack);
    }
    tx.commit()?;
    Ok(Decision::Appended(first))
}

/// 8 sessions subscribe random students to random courses through append_if
/// while backends are killed with SIGKILL: no course over its capacity, no
/// student over 3 courses, no subscription twice, no acknowledged commit lost.
#[test]
fn crash_dcb_course_invariants_under_load() {
    let db = Arc::new(TestDb::new("crash_dcb"));
    let mut setup = db.connect();
    let mut rng = rand::thread_rng();
    let mut capacities = HashMap::new();
    for term in 0..TERMS {
        let mut events = Vec::new();
        for course in 0..COURSES {
            let tag = format!("course:{term}-{course}");
            let capacity: i64 = rng.gen_range(3..=10);
            events.push(
                json!({"type": "CourseDefined", "payload": {"capacity": capacity}, "tags": [tag]}),
            );
            capacities.insert(tag, capacity);
        }
        append_if(&mut setup, &Value::Array(events), None, None).unwrap();
    }
    drop(setup);

    let started = Instant::now();
    let decided = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..WORKERS)
        .map(|w| {
            let (db, decided) = (db.clone(), decided.clone());
            thread::spawn(move || {
                let mut rng = rand::thread_rng();
                let mut session = Session::open(db.name());
                let mut tally = Tally::default();
                while decided.load(Ordering::Relaxed) < DECISIONS {
                    let term =
                        (decided.load(Ordering::Relaxed) / DECISIONS_PER_TERM).min(TERMS - 1);
                    let course = format!("course:{term}-{}", rng.gen_range(0..COURSES));
                    let student = format!("student:{term}-{}", rng.gen_range(0..STUDENTS));
                    // Refused by ZA004: read again and decide again.
                    loop {
                        match decide(&mut session, &course, &student, &mut rng) {
                            Ok(outcome) => {
                                match outcome {
                                    Decision::Appended(first) => {
                                        tally.appended += 1;
                                        tally.acknowledged.push((
                                            first,
                                            course.clone(),
                                            student.clone(),
                                        ));
                                    }
                                    Decision::RolledBack => tally.rolled_back += 1,
                                    Decision::Refused => tally.refused += 1,
                                }
                                tally.decisions += 1;
                                decided.fetch_add(1, Ordering::Relaxed);
                                break;
                            }
                            Err(e) if e.code().is_some_and(|c| c.code() == "ZA004") => {
                                tally.conflicts += 1;
                                tally.decisions += 1;
                                decided.fetch_add(1, Ordering::Relaxed);
                            }
                            // Killed: whether an unacknowledged COMMIT landed is unknown.
                            Err(e) if lost(&e) => {
                                tally.reconnects += 1;
                                session = Session::open(db.name());
                                break;
                            }
                            Err(e) => panic!("worker {w}: {course} {student}: {e:?}"),
                        }
                    }
                }
                tally
            })
        })
        .collect();

    let stop = Arc::new(AtomicBool::new(false));
    let killer = {
        let (db, decided, stop) = (db.clone(), decided.clone(), stop.clone());
        thread::spawn(move || {
            const BACKEND: &str =
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() \
                                   AND pid <> pg_backend_pid() AND backend_type = 'client backend' \
                                   ORDER BY random() LIMIT 1";
            let mut kills = 0;
            for k in 1..=KILLS {
                // Spaced out: at a quarter, half and three quarters of the run.
                while decided.load(Ordering::Relaxed) < DECISIONS * k / (KILLS + 1) {
                    if stop.load(Ordering::Relaxed) {
                        return kills;
                    }
                    thread::sleep(Duration::from_millis(20));
                }
                // The workers may still be reconnecting after the last kill.
                let deadline = Instant::now() + Duration::from_secs(60);
                let pid: i32 = loop {
                    let mut admin = reconnect_to(db.name());
                    match admin.query_opt(BACKEND, &[]) {
                        Ok(Some(row)) => break row.get(0),
                        Ok(None) | Err(_) if Instant::now() < deadline => {
                            thread::sleep(Duration::from_millis(100))
                        }
                        outcome => panic!("no worker backend to kill: {outcome:?}"),
                    }
                };
                kill_9(pid);
                kills += 1;
            }
            kills
        })
    };

    let tallies: Vec<_> = workers.into_iter().map(|w| w.join()).collect();
    stop.store(true, Ordering::Relaxed);
    let kills = killer.join().unwrap();
    let tallies: Vec<Tally> = tallies.into_iter().map(|t| t.unwrap()).collect();
    let seconds = started.elapsed().as_secs_f64();
    let sum = |f: fn(&Tally) -> u64| tallies.iter().map(f).sum::<u64>();
    let (decisions, appended, rolled_back, refused, conflicts, reconnects) = (
        sum(|t| t.decisions),
        sum(|t| t.appended),
        sum(|t| t.rolled_back),
        sum(|t| t.refused),
        sum(|t| t.conflicts),
        sum(|t| t.reconnects),
    );
    println!(
        "dcb courses: {decisions} decisions in {seconds:.1} s ({:.0}/s): {appended} appended, \
         {rolled_back} rolled back, {refused} refused by rule, {conflicts} ZA004 retries, \
         {kills} kills, {reconnects} reconnects",
        decisions as f64 / seconds
    );

    let mut client = reconnect_to(db.name());
    let stored_capacities: HashMap<String, i64> = client
        .query(
            "SELECT tags[1], (payload ->> 'capacity')::bigint FROM allsource.events WHERE event_type = 'CourseDefined'",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(stored_capacities, capacities, "the courses as defined");
    let subscribed: HashMap<i64, BTreeSet<String>> = client
        .query(
            "SELECT position, tags FROM allsource.events WHERE event_type = 'StudentSubscribed'",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get::<_, Vec<String>>(1).into_iter().collect()))
        .collect();
    let (mut per_course, mut per_student, mut pairs) =
        (HashMap::new(), HashMap::new(), HashSet::new());
    for tags in subscribed.values() {
        let course = tags.iter().find(|t| t.starts_with("course:")).unwrap();
        let student = tags.iter().find(|t| t.starts_with("student:")).unwrap();
        *per_course.entry(course.clone()).or_insert(0i64) += 1;
        *per_student.entry(student.clone()).or_insert(0i64) += 1;
        assert!(
            pairs.insert((course, student)),
            "{student} subscribed to {course} twice"
        );
    }
    for (course, count) in &per_course {
        assert!(
            *count <= capacities[course],
            "{course}: {count} subscriptions, capacity {}",
            capacities[course]
        );
    }
    for (student, count) in &per_student {
        assert!(
            *count <= MAX_COURSES_PER_STUDENT,
            "{student}: {count} courses"
        );
    }
    assert!(
        conflicts > 0,
        "no ZA004 at all: the decisions never contended"
    );
    assert_eq!(kills, KILLS, "kills");
    assert!(decisions >= DECISIONS);
    assert!(
        appended <= subscribed.len() as u64,
        "{appended} acknowledged, {} stored",
        subscribed.len()
    );
    for tally in &tallies {
        for (position, course, student) in &tally.acknowledged {
            let tags = subscribed
                .get(position)
                .unwrap_or_else(|| panic!("acknowledged subscription at position {position} lost"));
            assert!(
                tags.contains(course) && tags.contains(student),
                "position {position} holds {tags:?}, not {course} {student}"
            );
        }
    }
    // Through read_query too: the watermark is not stuck after the crashes.
    let read: i64 = client
        .query_one(
            r#"SELECT count(*) FROM allsource.read_query('[{"types": ["StudentSubscribed"]}]', 0, 1000000)"#,
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(read, subscribed.len() as i64);
    let problems: i64 = client
        .query_one("SELECT count(*) FROM allsource.verify_all()", &[])
        .unwrap()
        .get(0);
    assert_eq!(problems, 0, "verify_all finds problems");
}

/// 8 sessions claim the same username at the same moment, 50 times over:
/// exactly one wins each, the others get ZA004 naming the winner.
#[test]
fn dcb_unique_username_exactly_one_claim_wins() {
    const CLAIMERS: usize = 8;
    const NAMES: usize = 50;
    let db = Arc::new(TestDb::new("dcb_username"));
    let start = Arc::new(Barrier::new(CLAIMERS));
    let claimers: Vec<_> = (0..CLAIMERS)
        .map(|claimer| {
            let (db, start) = (db.clone(), start.clone());
            thread::spawn(move || {
                let mut client = db.connect();
                // Every session reaches every barrier, whatever happens, so a failure cannot hang the others.
                (0..NAMES)
                    .map(|n| {
                        let tag = format!("username:name-{n}");
                        let condition = json!([{"types": ["UsernameClaimed"], "tags": [&tag]}]);
                        let head = client
                            .query_one("SELECT allsource.query_head($1::jsonb)", &[&condition])
                            .map(|r| r.get::<_, i64>(0));
                        start.wait();
                        let event = tagged(
                            "UsernameClaimed",
                            json!({ "claimer": claimer }),
                            &[tag.as_str()],
                        );
                        let outcome = head
                            .and_then(|head| {
                                append_if(&mut client, &event, Some(&condition), Some(head))
                            })
                            .map(|(first, _)| first)
                            .map_err(|e| {
                                let message = e
                                    .as_db_error()
                                    .map_or(e.to_string(), |d| d.message().to_string());
                                (e.code().map(|c| c.code().to_string()), message)
                            });
                        start.wait();
                        outcome
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let outcomes: Vec<Vec<_>> = claimers.into_iter().map(|c| c.join().unwrap()).collect();
    let mut client = db.connect();
    for n in 0..NAMES {
        let round: Vec<_> = outcomes.iter().map(|o| &o[n]).collect();
        let winners: Vec<(usize, i64)> = round
            .iter()
            .enumerate()
            .filter_map(|(claimer, o)| o.as_ref().ok().map(|p| (claimer, *p)))
            .collect();
        assert_eq!(winners.len(), 1, "name-{n}: one winner: {round:?}");
        let (winner, position) = winners[0];
        for outcome in &round {
            if let Err((code, message)) = outcome {
                assert_eq!(code.as_deref(), Some("ZA004"), "name-{n}: {message}");
                assert!(
                    positions_named(message).contains(&position),
                    "name-{n}: the refusal names the winner's position {position}: {message}"
                );
            }
        }
        let stored: Vec<(i64, Value)> = client
            .query(
                "SELECT position, payload FROM allsource.events WHERE event_type = 'UsernameClaimed' AND tags @> ARRAY[$1]",
                &[&format!("username:name-{n}")],
            )
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        assert_eq!(
            stored,
            [(position, json!({ "claimer": winner }))],
            "name-{n}"
        );
    }
}

/// Conditions and events that share no tag and no type do not wait for each
/// other; those that share a tag do.
#[test]
fn dcb_disjoint_boundaries_do_not_wait() {
    let db = TestDb::new("dcb_disjoint");
    let (mut a, mut b, mut c, mut d) = (db.connect(), db.connect(), db.connect(), db.connect());
    // A wait for a lock fails fast instead of hanging; any other wait fails at 5 s.
    b.batch_execute("SET lock_timeout = '2s'; SET statement_timeout = '5s'")
        .unwrap();
    c.batch_execute("SET lock_timeout = '200ms'; SET statement_timeout = '5s'")
        .unwrap();
    d.batch_execute("SET lock_timeout = '200ms'; SET statement_timeout = '5s'")
        .unwrap();
    let before = query_head(&mut a, Some(&on_tag("a:1")));
    a.batch_execute("BEGIN").unwrap();
    let (held, _) = append_if(
        &mut a,
        &tagged("AHappened", json!({}), &["a:1"]),
        Some(&on_tag("a:1")),
        Some(before),
    )
    .unwrap();

    let head = query_head(&mut b, Some(&on_tag("b:1")));
    let result = append_if(
        &mut b,
        &tagged("BHappened", json!({}), &["b:1"]),
        Some(&on_tag("b:1")),
        Some(head),
    );
    assert!(result.is_ok(), "B on b:1 waited for A on a:1: {result:?}");

    // A's open event matches C's condition: C waits, whatever its own events are.
    for tags in [["a:1"], ["c:1"]] {
        assert_fails(
            append_if(
                &mut c,
                &tagged("CHappened", json!({}), &tags),
                Some(&on_tag("a:1")),
                Some(before),
            ),
            "55P03",
            &format!("C on a:1 with an event tagged {tags:?} while A is open"),
        );
    }
    // A plain append matching A's condition waits; one of another tag does not.
    assert_fails(
        d.query_one(
            "SELECT position FROM allsource.append('d-1', 'DHappened', '{}', tags => ARRAY['a:1'])",
            &[],
        ),
        "55P03",
        "a plain append tagged a:1 while A holds a condition on a:1",
    );
    d.batch_execute("SET lock_timeout = '2s'").unwrap();
    let result = d.query_one(
        "SELECT position FROM allsource.append('d-2', 'DHappened', '{}', tags => ARRAY['b:2'])",
        &[],
    );
    assert!(
        result.is_ok(),
        "a plain append tagged b:2 waited for A: {result:?}"
    );

    a.batch_execute("COMMIT").unwrap();
    assert_conflict_at(
        append_if(
            &mut c,
            &tagged("CHappened", json!({}), &["a:1"]),
            Some(&on_tag("a:1")),
            Some(before),
        ),
        held,
        "C after A committed",
    );
    let head = query_head(&mut c, Some(&on_tag("a:1")));
    append_if(
        &mut c,
        &tagged("CHappened", json!({}), &["a:1"]),
        Some(&on_tag("a:1")),
        Some(head),
    )
    .expect("C from the head after A's event");

    // The other way round: an open plain append tagged a:2 holds up a condition on a:2.
    let before = query_head(&mut c, Some(&on_tag("a:2")));
    d.batch_execute("BEGIN").unwrap();
    let open: i64 = d
        .query_one(
            "SELECT position FROM allsource.append('d-3', 'DHappened', '{}', tags => ARRAY['a:2'])",
            &[],
        )
        .unwrap()
        .get(0);
    assert_fails(
        append_if(
            &mut c,
            &tagged("CHappened", json!({}), &["c:2"]),
            Some(&on_tag("a:2")),
            Some(before),
        ),
        "55P03",
        "C on a:2 while a plain append tagged a:2 is open",
    );
    d.batch_execute("COMMIT").unwrap();
    assert_conflict_at(
        append_if(
            &mut c,
            &tagged("CHappened", json!({}), &["c:2"]),
            Some(&on_tag("a:2")),
            Some(before),
        ),
        open,
        "C on a:2 after the plain append committed",
    );
}

/// Tags of one tenant are not in another's boundary.
#[test]
fn dcb_tenants_are_separate_boundaries() {
    let db = TestDb::new("dcb_tenants");
    let (mut acme, mut globex) = (db.connect(), db.connect());
    acme.batch_execute("SET allsource.tenant = 'acme'").unwrap();
    globex
        .batch_execute("SET allsource.tenant = 'globex'")
        .unwrap();
    let x = on_tag("x:1");
    let event = |who: &str| tagged("Happened", json!({ "who": who }), &["x:1"]);
    let (acme_at, _) = append_if(&mut acme, &event("acme"), Some(&x), None).unwrap();
    // NULL after_position: any matching event of the tenant would conflict.
    let (globex_at, _) = append_if(&mut globex, &event("globex"), Some(&x), None)
        .expect("acme's x:1 does not count for globex");
    assert!(globex_at > acme_at);

    let read = |client: &mut Client, query: Option<&Value>| -> Vec<(i64, String)> {
        client
            .query(
                "SELECT position, tenant_id FROM allsource.read_query($1::jsonb)",
                &[&query],
            )
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect()
    };
    assert_eq!(
        read(&mut globex, Some(&x)),
        [(globex_at, "globex".to_string())]
    );
    assert_eq!(read(&mut globex, None), [(globex_at, "globex".to_string())]);
    assert_eq!(read(&mut acme, Some(&x)), [(acme_at, "acme".to_string())]);

    // Each tenant's own event conflicts, and the refusal names that one only.
    assert_conflict_at(
        append_if(&mut globex, &event("globex"), Some(&x), None),
        globex_at,
        "globex's own x:1",
    );
    assert_conflict_at(
        append_if(&mut acme, &event("acme"), Some(&x), Some(acme_at - 1)),
        acme_at,
        "acme's own x:1",
    );
    // globex's later x:1 is not in acme's boundary after acme's own event.
    append_if(&mut acme, &event("acme"), Some(&x), Some(acme_at))
        .expect("globex's x:1 does not count for acme");
    // [] (any event at all) means any event of the tenant.
    let (acme_last, _) =
        append_if(&mut acme, &tagged("Other", json!({}), &["y:1"]), None, None).unwrap();
    let globex_head = query_head(&mut globex, None);
    assert!(globex_head >= acme_last);
    append_if(
        &mut globex,
        &tagged("Other", json!({}), &["y:1"]),
        Some(&json!([])),
        Some(globex_at),
    )
    .expect("acme's events are not 'any event' of globex");
}

/// Events appended by append_if without a stream reach subscriptions with
/// their tags, in position order, in `$dcb-` streams of their own.
#[test]
fn dcb_subscriptions_deliver_tagged_events() {
    let db = TestDb::new("dcb_subscription");
    let mut client = db.connect();
    client
        .batch_execute(
            "SELECT allsource.create_subscription('everything');
             SELECT allsource.create_subscription('opened', categories => ARRAY['$dcb'], event_types => ARRAY['Opened']);",
        )
        .unwrap();
    let first = append_if(
        &mut client,
        &json!([
            {"type": "Opened", "payload": {"n": 1}, "tags": ["account:1", "region:eu"]},
            {"type": "Deposited", "payload": {"n": 2}, "tags": ["account:1"]}
        ]),
        Some(&on_tag("account:1")),
        None,
    )
    .unwrap();
    let second = append_if(
        &mut client,
        &tagged("Opened", json!({"n": 3}), &["account:2"]),
        Some(&on_tag("account:2")),
        Some(0),
    )
    .unwrap();
    let plain: i64 = client
        .query_one(
            "SELECT position FROM allsource.append('plain-1', 'Noted', '{}')",
            &[],
        )
        .unwrap()
        .get(0);

    type Delivered = (i64, String, i64, String, Option<Vec<String>>);
    let receive = |client: &mut Client, name: &str| -> Vec<Delivered> {
        client
            .query(
                "SELECT position, stream_id, version, event_type, tags FROM allsource.receive($1)",
                &[&name],
            )
            .unwrap()
            .iter()
            .map(|r| {
                let tags: Option<Vec<String>> = r.get(4);
                let sorted = tags.map(|mut t| {
                    t.sort();
                    t
                });
                (r.get(0), r.get(1), r.get(2), r.get(3), sorted)
            })
            .collect()
    };
    let delivered = receive(&mut client, "everything");
    let summary: Vec<(i64, i64, &str, Option<Vec<&str>>)> = delivered
        .iter()
        .map(|(p, _, v, t, tags)| {
            let tags = tags
                .as_ref()
                .map(|t| t.iter().map(String::as_str).collect());
            (*p, *v, t.as_str(), tags)
        })
        .collect();
    assert_eq!(
        summary,
        [
            (first.0, 1, "Opened", Some(vec!["account:1", "region:eu"])),
            (first.1, 2, "Deposited", Some(vec!["account:1"])),
            (second.0, 1, "Opened", Some(vec!["account:2"])),
            (plain, 1, "Noted", None),
        ]
    );
    assert!(first.0 < first.1 && first.1 < second.0 && second.0 < plain);
    let streams: Vec<&str> = delivered.iter().map(|d| d.1.as_str()).collect();
    for stream in &streams[..3] {
        let id = stream
            .strip_prefix("$dcb-")
            .unwrap_or_else(|| panic!("stream {stream} of an append_if without stream_id"));
        uuid::Uuid::parse_str(id).unwrap_or_else(|e| panic!("{stream}: {e}"));
    }
    assert_eq!(streams[0], streams[1], "one append_if, one stream");
    assert_ne!(streams[1], streams[2], "each append_if a stream of its own");
    assert_eq!(streams[3], "plain-1");

    // `$dcb` works as a category.
    let opened: Vec<i64> = receive(&mut client, "opened").iter().map(|d| d.0).collect();
    assert_eq!(opened, [first.0, second.0]);

    client
        .execute("SELECT allsource.ack('everything', $1)", &[&plain])
        .unwrap();
    assert_eq!(receive(&mut client, "everything"), []);
}
