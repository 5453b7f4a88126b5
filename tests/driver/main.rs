//! Driver tests: a real client (the `postgres` crate) against a real server
//! with the extension preloaded, one database per test. `scripts/test.sh`
//! starts the server and sets `ALLSOURCE_TEST_URL`.

mod bad_input;
mod concurrency;
mod crash;
mod databases;
mod dcb;
mod decoding;
mod integrity;
mod lifecycle;
mod limits;
mod properties;
mod queue;
mod savepoints;
mod subscriptions;
mod tenants;
mod watermark;
mod workers;

use postgres::{Client, NoTls};
use std::sync::atomic::{AtomicU32, Ordering};

/// A fresh database with the extension created, dropped again afterwards.
pub struct TestDb {
    name: String,
}

pub fn server_url() -> String {
    std::env::var("ALLSOURCE_TEST_URL").expect(
        "ALLSOURCE_TEST_URL is not set: run scripts/test.sh, which starts a preloaded server for these tests",
    )
}

/// A session on `database` of the test server.
pub fn connect_to(database: &str) -> Client {
    try_connect_to(database).unwrap_or_else(|e| panic!("connect to {database}: {e}"))
}

pub fn try_connect_to(database: &str) -> Result<Client, postgres::Error> {
    Client::connect(&format!("{} dbname={database}", server_url()), NoTls)
}

/// A session on `database`, retried for a minute while the server restarts.
pub fn reconnect_to(database: &str) -> Client {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        match try_connect_to(database) {
            Ok(client) => return client,
            Err(_) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(200))
            }
            Err(e) => panic!("connect to {database}: {e}"),
        }
    }
}

/// A login role named `{database}_{what}`, a member of `group` if given,
/// dropped when the value is.
pub struct Login {
    pub name: String,
}

impl Login {
    pub fn new(database: &str, what: &str, group: Option<&str>) -> Login {
        let name = format!("{database}_{what}");
        let member = group.map_or(String::new(), |g| format!(" IN ROLE {g}"));
        connect_to("postgres")
            .batch_execute(&format!("CREATE ROLE {name} LOGIN{member}"))
            .unwrap();
        Login { name }
    }

    /// A session of this role on `database`, with more connection `options`
    /// (`""` for none).
    pub fn connect(&self, database: &str, options: &str) -> Client {
        Client::connect(
            &format!(
                "{} dbname={database} user={} {options}",
                server_url(),
                self.name
            ),
            NoTls,
        )
        .unwrap_or_else(|e| panic!("connect as {}: {e}", self.name))
    }
}

impl Drop for Login {
    fn drop(&mut self) {
        if let Ok(mut admin) = try_connect_to("postgres") {
            let _ = admin.batch_execute(&format!("DROP ROLE IF EXISTS {}", self.name));
        }
    }
}

impl TestDb {
    /// A database with the extension created.
    pub fn new(test: &str) -> TestDb {
        let db = TestDb::empty(test);
        db.connect()
            .batch_execute("CREATE EXTENSION allsource")
            .unwrap();
        db
    }

    /// A database without the extension (a restore creates it).
    pub fn empty(test: &str) -> TestDb {
        TestDb::with_options(test, "")
    }

    /// A database without the extension, made with CREATE DATABASE's `options`.
    pub fn with_options(test: &str, options: &str) -> TestDb {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "driver_{}_{}_{}",
            test,
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let mut admin = connect_to("postgres");
        admin
            .batch_execute(&format!("CREATE DATABASE {name} {options}"))
            .unwrap();
        TestDb { name }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn connect(&self) -> Client {
        connect_to(&self.name)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Ok(mut admin) = Client::connect(&format!("{} dbname=postgres", server_url()), NoTls)
        {
            let _ = admin.batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ));
        }
    }
}

/// The SQLSTATE of a failed statement.
pub fn sqlstate(error: &postgres::Error) -> String {
    error
        .code()
        .map(|c| c.code().to_string())
        .unwrap_or_else(|| panic!("not a server error: {error}"))
}

/// Restarts the test server (fast shutdown) and waits until it accepts
/// connections. scripts/test.sh says where it is.
pub fn restart_server() {
    pg_ctl(&["--mode=fast", "restart"]);
}

/// Starts the test server (after a crash: runs crash recovery) and waits
/// until it accepts connections.
pub fn start_server() {
    pg_ctl(&["start"]);
}

/// The test server's data directory.
pub fn server_data() -> String {
    std::env::var("ALLSOURCE_TEST_PGDATA").expect("ALLSOURCE_TEST_PGDATA is not set")
}

fn pg_ctl(action: &[&str]) {
    let data = server_data();
    let bin = std::env::var("ALLSOURCE_TEST_PG_BIN").expect("ALLSOURCE_TEST_PG_BIN is not set");
    let pg_ctl = format!("{bin}/pg_ctl");
    let log = format!("{data}/server.log");
    let mut args = vec!["--pgdata", &data, "--log", &log, "--wait"];
    args.extend_from_slice(action);
    // PostgreSQL runs as postgres; root switches to it.
    let as_root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .unwrap()
        .stdout
        == b"0\n";
    let mut command = if as_root {
        let mut c = std::process::Command::new("runuser");
        c.args(["-u", "postgres", "--", &pg_ctl]);
        c
    } else {
        std::process::Command::new(&pg_ctl)
    };
    let status = command
        .args(args)
        .env_remove("RUST_BACKTRACE")
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "pg_ctl {action:?} failed");
}
