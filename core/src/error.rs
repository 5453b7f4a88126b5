//! Errors users see: a SQLSTATE, a lower-case message that names the object,
//! and where it helps a detail and a hint. Pure Rust; the extension raises them.

use std::fmt;

/// An error destined for the SQL caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub sqlstate: SqlState,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

pub type Result<T> = std::result::Result<T, Error>;

/// A five-character SQLSTATE, e.g. `ZA001`: the one type for it everywhere
/// (errors, the ingest queue's results, what a worker caught).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SqlState([u8; 5]);

impl SqlState {
    /// `code` must be five characters of `0`–`9` and `A`–`Z`.
    pub const fn new(code: &[u8; 5]) -> Self {
        SqlState(*code)
    }

    pub fn as_bytes(&self) -> &[u8; 5] {
        &self.0
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or("?????")
    }
}

impl fmt::Display for SqlState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for SqlState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}

impl PartialEq<&str> for SqlState {
    fn eq(&self, other: &&str) -> bool {
        self.0 == other.as_bytes()
    }
}

/// Every SQLSTATE the extension raises or looks for, named once: AllSource's
/// own (class `ZA`, docs/sql-reference.md's errors table) and PostgreSQL's.
pub mod sqlstate {
    use super::SqlState;

    /// The stream is not at the version the append expected.
    pub const WRONG_EXPECTED_VERSION: SqlState = SqlState::new(b"ZA001");
    /// The stream is deleted.
    pub const STREAM_DELETED: SqlState = SqlState::new(b"ZA002");
    /// An event id already names a different event.
    pub const EVENT_ID_REUSED: SqlState = SqlState::new(b"ZA003");
    /// An `append_if` condition failed.
    pub const CONDITION_FAILED: SqlState = SqlState::new(b"ZA004");
    pub const FEATURE_NOT_SUPPORTED: SqlState = SqlState::new(b"0A000");
    pub const INVALID_PARAMETER_VALUE: SqlState = SqlState::new(b"22023");
    pub const UNIQUE_VIOLATION: SqlState = SqlState::new(b"23505");
    pub const CHECK_VIOLATION: SqlState = SqlState::new(b"23514");
    pub const READ_ONLY_SQL_TRANSACTION: SqlState = SqlState::new(b"25006");
    pub const TRANSACTION_TIMEOUT: SqlState = SqlState::new(b"25P04");
    pub const SERIALIZATION_FAILURE: SqlState = SqlState::new(b"40001");
    pub const DEADLOCK_DETECTED: SqlState = SqlState::new(b"40P01");
    pub const INSUFFICIENT_PRIVILEGE: SqlState = SqlState::new(b"42501");
    pub const UNDEFINED_OBJECT: SqlState = SqlState::new(b"42704");
    pub const CONFIGURATION_LIMIT_EXCEEDED: SqlState = SqlState::new(b"53400");
    pub const PROGRAM_LIMIT_EXCEEDED: SqlState = SqlState::new(b"54000");
    pub const OBJECT_NOT_IN_PREREQUISITE_STATE: SqlState = SqlState::new(b"55000");
    pub const OBJECT_IN_USE: SqlState = SqlState::new(b"55006");
    pub const LOCK_NOT_AVAILABLE: SqlState = SqlState::new(b"55P03");
    pub const QUERY_CANCELED: SqlState = SqlState::new(b"57014");
    pub const INTERNAL_ERROR: SqlState = SqlState::new(b"XX000");
    pub const DATA_CORRUPTED: SqlState = SqlState::new(b"XX001");
}

impl Error {
    pub fn new(sqlstate: SqlState, message: impl Into<String>) -> Self {
        Error {
            sqlstate,
            message: message.into(),
            detail: None,
            hint: None,
        }
    }

    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// `22023`: a bad argument; `argument` is the SQL argument's name.
    pub fn invalid_argument(argument: &str, problem: impl fmt::Display) -> Self {
        Error::new(
            sqlstate::INVALID_PARAMETER_VALUE,
            format!("invalid argument \"{argument}\": {problem}"),
        )
    }

    /// `ZA001`: the stream is not at the version the caller expected.
    pub fn wrong_expected_version(stream_id: &str, expected: &str, actual: i64) -> Self {
        Error::new(
            sqlstate::WRONG_EXPECTED_VERSION,
            format!(
                "wrong expected version for stream \"{stream_id}\": expected {expected}, actual {actual}"
            ),
        )
        .with_detail(format!(
            "stream \"{stream_id}\" is at version {actual}; the append expected {expected}."
        ))
        .with_hint("Read the stream again, decide on its current state, and retry with expected_version => its current version.")
    }

    /// `ZA002`: the stream was deleted.
    pub fn stream_deleted(stream_id: &str) -> Self {
        Error::new(
            sqlstate::STREAM_DELETED,
            format!("stream \"{stream_id}\" is deleted"),
        )
        .with_hint("A deleted stream accepts no more events; append to a new stream id.")
    }

    /// `42501`: the stream belongs to another tenant (or to none while the
    /// session has one, or the other way round).
    pub fn other_tenant(stream_id: &str) -> Self {
        Error::new(
            sqlstate::INSUFFICIENT_PRIVILEGE,
            format!("stream \"{stream_id}\" belongs to another tenant"),
        )
        .with_hint("Set allsource.tenant to the stream's tenant, or use a stream id of your own.")
    }

    /// `ZA003`: an event id that exists with other content.
    pub fn event_id_reused(event_id: &str, detail: impl Into<String>) -> Self {
        Error::new(
            sqlstate::EVENT_ID_REUSED,
            format!("event id {event_id} was already used for a different event"),
        )
        .with_detail(detail)
        .with_hint("An event id identifies one event: retry with the same stream, type and payload, or use a new id.")
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.sqlstate, self.message)
    }
}

impl std::error::Error for Error {}
