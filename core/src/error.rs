//! Errors users see: a SQLSTATE, a lower-case message that names the object,
//! and where it helps a detail and a hint. Pure Rust; the extension raises them.

use std::fmt;

/// An error destined for the SQL caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    /// Five-character SQLSTATE, e.g. `ZA001`.
    pub sqlstate: &'static str,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

pub type Result<T> = std::result::Result<T, Error>;

/// SQLSTATEs from SPEC.md's error table.
pub mod sqlstate {
    pub const WRONG_EXPECTED_VERSION: &str = "ZA001";
    pub const STREAM_DELETED: &str = "ZA002";
    pub const EVENT_ID_REUSED: &str = "ZA003";
    pub const INVALID_PARAMETER_VALUE: &str = "22023";
    pub const PROGRAM_LIMIT_EXCEEDED: &str = "54000";
    pub const INSUFFICIENT_PRIVILEGE: &str = "42501";
}

impl Error {
    pub fn new(sqlstate: &'static str, message: impl Into<String>) -> Self {
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
