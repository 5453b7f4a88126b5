//! The server under test: connections that survive restarts, the faults the
//! run injects (kill -9 of the postmaster, a backend, an ingest worker or a
//! subscription worker),
//! and the memory of a backend.

use postgres::{Client, NoTls};
use std::path::PathBuf;
use std::process::Command;
use std::thread::sleep;
use std::time::{Duration, Instant};

/// What a run may kill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Postmaster,
    Backend,
    Worker,
    /// A subscription worker (the projection's handler runs in it).
    Subscriber,
}

impl Fault {
    pub fn parse(name: &str) -> Result<Fault, String> {
        match name {
            "postmaster" => Ok(Fault::Postmaster),
            "backend" => Ok(Fault::Backend),
            "worker" => Ok(Fault::Worker),
            "subscriber" => Ok(Fault::Subscriber),
            other => Err(format!(
                "unknown fault {other:?}: use postmaster, backend, worker or subscriber"
            )),
        }
    }
}

pub struct Server {
    pub url: String,
    /// Needed to restart after killing the postmaster.
    pub pgdata: Option<PathBuf>,
    pub pg_bin: Option<PathBuf>,
}

impl Server {
    pub fn connect(&self) -> Result<Client, postgres::Error> {
        Client::connect(&self.url, NoTls)
    }

    /// A session, retried while the server restarts or recovers; `None`
    /// after `patience`.
    pub fn reconnect(&self, patience: Duration) -> Option<Client> {
        let deadline = Instant::now() + patience;
        loop {
            if let Ok(mut client) = self.connect() {
                if client.simple_query("SELECT 1").is_ok() {
                    return Some(client);
                }
            }
            if Instant::now() > deadline {
                return None;
            }
            sleep(Duration::from_millis(200));
        }
    }

    /// Kills what `fault` names with SIGKILL; returns the pid killed.
    pub fn inject(&self, fault: Fault) -> Result<i32, String> {
        match fault {
            Fault::Postmaster => self.kill_postmaster(),
            Fault::Backend => self.kill_one(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() \
                 AND backend_type = 'client backend' AND pid <> pg_backend_pid() \
                 ORDER BY random() LIMIT 1",
            ),
            Fault::Worker => self
                .kill_one("SELECT pid FROM allsource.ingest_workers() ORDER BY random() LIMIT 1"),
            Fault::Subscriber => self.kill_one(
                "SELECT pid FROM pg_stat_activity WHERE backend_type = 'allsource subscription worker' \
                 AND datname = current_database() ORDER BY random() LIMIT 1",
            ),
        }
    }

    fn kill_one(&self, query: &str) -> Result<i32, String> {
        let mut client = self.connect().map_err(|e| format!("connect: {e}"))?;
        let pid: i32 = client
            .query_opt(query, &[])
            .map_err(|e| format!("finding a process to kill: {e}"))?
            .ok_or("no process to kill")?
            .get(0);
        signal("-KILL", pid)?;
        Ok(pid)
    }

    /// The postmaster and every child at once, as a power cut would; then a
    /// fresh start, which runs crash recovery.
    fn kill_postmaster(&self) -> Result<i32, String> {
        let pgdata = self
            .pgdata
            .as_ref()
            .ok_or("killing the postmaster needs --pgdata (and --pg-bin) to restart it")?;
        let pid_file = std::fs::read_to_string(pgdata.join("postmaster.pid"))
            .map_err(|e| format!("reading postmaster.pid: {e}"))?;
        let postmaster: i32 = pid_file
            .lines()
            .next()
            .and_then(|line| line.trim().parse().ok())
            .ok_or("postmaster.pid has no pid")?;
        // Stopped first, so it forks no new backend while the rest are found:
        // every process of the cluster works in the data directory.
        signal("-STOP", postmaster)?;
        let processes = processes_in(pgdata);
        for pid in std::iter::once(postmaster).chain(processes.iter().copied()) {
            let _ = signal("-KILL", pid);
        }
        // A new postmaster refuses to start while an old process still exists.
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::iter::once(&postmaster)
            .chain(&processes)
            .any(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists())
        {
            if Instant::now() > deadline {
                return Err("the killed server's processes did not go away".into());
            }
            sleep(Duration::from_millis(50));
        }
        self.start()?;
        Ok(postmaster)
    }

    fn start(&self) -> Result<(), String> {
        let pgdata = self.pgdata.as_ref().ok_or("no --pgdata")?;
        let pg_ctl = self
            .pg_bin
            .as_ref()
            .map(|bin| bin.join("pg_ctl"))
            .ok_or("restarting the server needs --pg-bin")?;
        let log = pgdata.join("server.log");
        let args = [
            "--pgdata".as_ref(),
            pgdata.as_os_str(),
            "--log".as_ref(),
            log.as_os_str(),
            "--wait".as_ref(),
            "--timeout=300".as_ref(),
            "start".as_ref(),
        ];
        // PostgreSQL refuses to run as root: start it as the data directory's owner.
        let mut command = if running_as_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&pg_ctl);
            c
        } else {
            Command::new(&pg_ctl)
        };
        let output = command
            .args(args)
            .env_remove("RUST_BACKTRACE")
            .output()
            .map_err(|e| format!("running {}: {e}", pg_ctl.display()))?;
        if !output.status.success() {
            return Err(format!(
                "pg_ctl start failed: {}",
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        Ok(())
    }
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout == b"0\n")
}

fn signal(signal: &str, pid: i32) -> Result<(), String> {
    let status = Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .map_err(|e| format!("kill: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!(
            "kill {signal} {pid} failed (run as root or as the server's user)"
        ))
    }
}

/// The processes whose working directory is `dir`.
fn processes_in(dir: &std::path::Path) -> Vec<i32> {
    let Ok(dir) = dir.canonicalize() else {
        return Vec::new();
    };
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd == dir))
        .collect()
}

/// Private memory of a process (RssAnon, kB): what a leak in a backend grows.
pub fn private_memory_kb(pid: i32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("RssAnon:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}
