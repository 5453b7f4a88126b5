//! A reader follows `read_all` (or `read_category`) up to the watermark, as a
//! subscriber would, through restarts. It checks as it goes that positions
//! only ascend and that the watermark never goes back, and keeps a count and
//! a sum of what it saw, which a check compares with the table.

use crate::shared::Shared;
use std::sync::Mutex;
use std::time::Duration;

/// How far a reader got and what it saw on the way.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Progress {
    /// The last watermark read: the cursor's distance to it is the lag.
    pub watermark: i64,
    pub cursor: i64,
    pub events: u64,
    pub position_sum: i128,
}

pub struct Reader {
    pub number: usize,
    /// `None`: `read_all`; otherwise `read_category` of this category.
    pub category: Option<String>,
    pub progress: Mutex<Progress>,
    /// What the last check confirmed: the next one checks only past it.
    pub verified: Mutex<Progress>,
}

impl Reader {
    pub fn new(number: usize, category: Option<String>) -> Reader {
        Reader {
            number,
            category,
            progress: Mutex::new(Progress::default()),
            verified: Mutex::new(Progress::default()),
        }
    }

    pub fn name(&self) -> String {
        match &self.category {
            None => format!("reader {} (read_all)", self.number),
            Some(category) => format!("reader {} (read_category {category})", self.number),
        }
    }

    /// The SQL filter of the events this reader should see.
    pub fn filter(&self) -> String {
        match &self.category {
            None => "true".into(),
            Some(category) => {
                format!("(stream_id = '{category}' OR stream_id LIKE '{category}-%')")
            }
        }
    }

    pub fn run(&self, shared: &Shared) {
        let query = match &self.category {
            None => "SELECT position FROM allsource.read_all($1, 1000)".to_string(),
            Some(category) => {
                format!("SELECT position FROM allsource.read_category('{category}', $1, 1000)")
            }
        };
        let mut last_watermark = i64::MIN;
        let mut session = None;
        while !shared.stopping() {
            let Some(client) = session.as_mut() else {
                session = shared.server.reconnect(Duration::from_secs(2));
                continue;
            };
            let watermark = match client.query_one("SELECT allsource.watermark()", &[]) {
                Ok(row) => row.get::<_, i64>(0),
                Err(_) => {
                    session = None;
                    continue;
                }
            };
            if watermark < last_watermark {
                shared.anomaly(format!(
                    "{}: the watermark went back from {last_watermark} to {watermark}",
                    self.name()
                ));
                return;
            }
            last_watermark = watermark;
            let cursor = {
                let mut progress = self.progress.lock().unwrap();
                progress.watermark = watermark;
                progress.cursor
            };
            let rows = match client.query(&query, &[&cursor]) {
                Ok(rows) => rows,
                Err(_) => {
                    session = None;
                    continue;
                }
            };
            if rows.is_empty() {
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
            let mut progress = self.progress.lock().unwrap();
            for row in rows {
                let position: i64 = row.get(0);
                if position <= progress.cursor {
                    shared.anomaly(format!(
                        "{}: position {position} came after {}",
                        self.name(),
                        progress.cursor
                    ));
                    return;
                }
                progress.cursor = position;
                progress.events += 1;
                progress.position_sum += i128::from(position);
            }
        }
    }
}
