//! Driver tests: a real client (the `postgres` crate) against a real server
//! with the extension preloaded, one database per test. `scripts/test.sh`
//! starts the server and sets `ALLSOURCE_TEST_URL`.

mod bad_input;
mod concurrency;
mod crash;
mod integrity;
mod watermark;

use postgres::{Client, NoTls};
use std::sync::atomic::{AtomicU32, Ordering};

/// A fresh database with the extension created, dropped again afterwards.
pub struct TestDb {
    name: String,
}

fn server_url() -> String {
    std::env::var("ALLSOURCE_TEST_URL").expect(
        "ALLSOURCE_TEST_URL is not set: run scripts/test.sh, which starts a preloaded server for these tests",
    )
}

/// A session on `database` of the test server.
pub fn connect_to(database: &str) -> Client {
    Client::connect(&format!("{} dbname={database}", server_url()), NoTls)
        .unwrap_or_else(|e| panic!("connect to {database}: {e}"))
}

impl TestDb {
    pub fn new(test: &str) -> TestDb {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "driver_{}_{}_{}",
            test,
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let mut admin = connect_to("postgres");
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .unwrap();
        let db = TestDb { name };
        db.connect()
            .batch_execute("CREATE EXTENSION allsource")
            .unwrap();
        db
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
