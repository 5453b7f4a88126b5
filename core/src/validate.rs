//! Argument checks shared by every SQL function. Each error names the argument.

use crate::error::{sqlstate, Error, Result};

/// Longest stream id or event type, in bytes.
pub const MAX_NAME_BYTES: usize = 255;
/// Most events one `append_batch` call may carry.
pub const MAX_BATCH_EVENTS: usize = 100_000;

/// A required text argument that names something: present, non-empty, at most
/// [`MAX_NAME_BYTES`] bytes.
pub fn name<'a>(argument: &str, value: Option<&'a str>) -> Result<&'a str> {
    let value = value.ok_or_else(|| Error::invalid_argument(argument, "must not be null"))?;
    if value.is_empty() {
        return Err(Error::invalid_argument(argument, "must not be empty"));
    }
    if value.len() > MAX_NAME_BYTES {
        return Err(Error::invalid_argument(
            argument,
            format!(
                "is {} bytes long, the limit is {MAX_NAME_BYTES}",
                value.len()
            ),
        ));
    }
    Ok(value)
}

/// A tenant setting's raw bytes (`allsource.tenant`, `allsource.role_tenant`):
/// `None` when unset or empty, otherwise a name as [`name`] checks it. A
/// setting is bytes (a connection's startup options reach it unchecked): one
/// that is not UTF-8 is refused, as a lossy copy would be a different tenant
/// from the bytes reads compare.
pub fn tenant<'a>(setting: &str, value: Option<&'a std::ffi::CStr>) -> Result<Option<&'a str>> {
    let Some(value) = value.filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    let value = value.to_str().map_err(|_| {
        Error::new(
            sqlstate::INVALID_PARAMETER_VALUE,
            format!("invalid value for {setting}: it is not valid UTF-8"),
        )
        .with_hint("A tenant is a UTF-8 name of 1 to 255 bytes.")
    })?;
    name(setting, Some(value)).map(Some)
}

/// A required argument of any type.
pub fn required<T>(argument: &str, value: Option<T>) -> Result<T> {
    value.ok_or_else(|| Error::invalid_argument(argument, "must not be null"))
}

/// A number that must lie in `min..=max`.
pub fn in_range<T: PartialOrd + std::fmt::Display>(
    argument: &str,
    value: T,
    min: T,
    max: T,
) -> Result<T> {
    if value < min || value > max {
        return Err(Error::invalid_argument(
            argument,
            format!("{value} is out of range {min}..{max}"),
        ));
    }
    Ok(value)
}

/// A required number that must not be negative (offsets, counts, positions).
pub fn non_negative<T: PartialOrd + Default + std::fmt::Display>(
    argument: &str,
    value: Option<T>,
) -> Result<T> {
    let value = required(argument, value)?;
    if value < T::default() {
        return Err(Error::invalid_argument(
            argument,
            format!("{value} is negative"),
        ));
    }
    Ok(value)
}

/// Payload and metadata together, in bytes of their jsonb text, against
/// `allsource.max_event_bytes`.
pub fn event_size(argument: &str, bytes: usize, max_event_bytes: usize) -> Result<()> {
    if bytes > max_event_bytes {
        return Err(Error::new(
            sqlstate::PROGRAM_LIMIT_EXCEEDED,
            format!("{argument} is too large: its payload and metadata take {bytes} bytes, the limit is {max_event_bytes}"),
        )
        .with_hint("Raise allsource.max_event_bytes, or store large data elsewhere and reference it from the event."));
    }
    Ok(())
}

/// A consumer group: member and size both NULL (no group), or a size in
/// 1..=1024 (the partition hash's range) and a member in `[0, size)`.
pub fn consumer_group(member: Option<i32>, size: Option<i32>) -> Result<()> {
    match (member, size) {
        (None, None) => Ok(()),
        (Some(member), Some(size)) => {
            in_range(
                "consumer_group_size",
                size,
                1,
                crate::partition::MAX_PARTITIONS,
            )?;
            in_range("consumer_group_member", member, 0, size - 1)?;
            Ok(())
        }
        (None, Some(_)) => Err(Error::invalid_argument(
            "consumer_group_member",
            "must be given with consumer_group_size",
        )),
        (Some(_), None) => Err(Error::invalid_argument(
            "consumer_group_size",
            "must be given with consumer_group_member",
        )),
    }
}

/// What the caller expects of the stream's version before an append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpectedVersion {
    /// `NULL`: any version, the stream may or may not exist.
    Any,
    /// `0`: the stream must have no events.
    NoStream,
    /// `-1`: the stream must have at least one event.
    StreamExists,
    /// `N > 0`: the stream must be exactly at version N.
    Exactly(i64),
}

impl ExpectedVersion {
    /// Reads the `expected_version` argument.
    pub fn from_arg(value: Option<i64>) -> Result<Self> {
        match value {
            None => Ok(ExpectedVersion::Any),
            Some(0) => Ok(ExpectedVersion::NoStream),
            Some(-1) => Ok(ExpectedVersion::StreamExists),
            Some(n) if n > 0 => Ok(ExpectedVersion::Exactly(n)),
            Some(n) => Err(Error::invalid_argument(
                "expected_version",
                format!("{n} is not a version: use NULL (any), 0 (no stream), -1 (stream exists) or a positive version"),
            )),
        }
    }

    /// `Ok` when a stream at `actual` satisfies this expectation, `ZA001` otherwise.
    pub fn check(self, stream_id: &str, actual: i64) -> Result<()> {
        let (holds, expected) = match self {
            ExpectedVersion::Any => (true, String::new()),
            ExpectedVersion::NoStream => (actual == 0, "0 (no stream)".to_string()),
            ExpectedVersion::StreamExists => (actual >= 1, "-1 (stream exists)".to_string()),
            ExpectedVersion::Exactly(n) => (actual == n, n.to_string()),
        };
        if holds {
            Ok(())
        } else {
            Err(Error::wrong_expected_version(stream_id, &expected, actual))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::sqlstate;

    #[test]
    fn names_must_be_present_non_empty_and_short() {
        assert_eq!(name("stream_id", Some("order-1")), Ok("order-1"));
        for bad in [None, Some("")] {
            let err = name("stream_id", bad).unwrap_err();
            assert_eq!(err.sqlstate, sqlstate::INVALID_PARAMETER_VALUE);
            assert!(err.message.contains("\"stream_id\""), "{}", err.message);
        }
        let long = "x".repeat(MAX_NAME_BYTES + 1);
        assert!(name("event_type", Some(&long)).is_err());
        assert!(name("event_type", Some(&long[1..])).is_ok());
        // 128 two-byte characters are 256 bytes: the limit is in bytes.
        assert!(name("stream_id", Some(&"é".repeat(128))).is_err());
    }

    #[test]
    fn tenants_are_utf8_names_or_none() {
        assert_eq!(tenant("allsource.tenant", None), Ok(None));
        assert_eq!(tenant("allsource.tenant", Some(c"")), Ok(None));
        assert_eq!(tenant("allsource.tenant", Some(c"acme")), Ok(Some("acme")));
        assert_eq!(
            tenant("allsource.tenant", Some(c"acm\xc3\xa9")),
            Ok(Some("acmé"))
        );
        for bad in [c"acme\xff", c"\xc3", c"acme\xc3("] {
            let err = tenant("allsource.tenant", Some(bad)).unwrap_err();
            assert_eq!(err.sqlstate, sqlstate::INVALID_PARAMETER_VALUE);
            assert!(err.message.contains("UTF-8"), "{}", err.message);
        }
        let long = std::ffi::CString::new("t".repeat(MAX_NAME_BYTES + 1)).unwrap();
        assert!(tenant("allsource.tenant", Some(&long)).is_err());
    }

    #[test]
    fn expected_version_modes() {
        use ExpectedVersion::*;
        assert_eq!(ExpectedVersion::from_arg(None), Ok(Any));
        assert_eq!(ExpectedVersion::from_arg(Some(0)), Ok(NoStream));
        assert_eq!(ExpectedVersion::from_arg(Some(-1)), Ok(StreamExists));
        assert_eq!(ExpectedVersion::from_arg(Some(7)), Ok(Exactly(7)));
        let err = ExpectedVersion::from_arg(Some(-2)).unwrap_err();
        assert_eq!(err.sqlstate, sqlstate::INVALID_PARAMETER_VALUE);

        assert!(Any.check("s", 0).is_ok() && Any.check("s", 9).is_ok());
        assert!(NoStream.check("s", 0).is_ok() && NoStream.check("s", 1).is_err());
        assert!(StreamExists.check("s", 1).is_ok() && StreamExists.check("s", 0).is_err());
        assert!(Exactly(3).check("s", 3).is_ok() && Exactly(3).check("s", 4).is_err());
    }

    #[test]
    fn wrong_expected_version_names_stream_expected_and_actual() {
        let err = ExpectedVersion::Exactly(3).check("order-9", 5).unwrap_err();
        assert_eq!(err.sqlstate, sqlstate::WRONG_EXPECTED_VERSION);
        assert!(err.message.contains("order-9"));
        assert!(err.message.contains("expected 3"));
        assert!(err.message.contains("actual 5"));
        assert!(err.hint.is_some());
    }

    #[test]
    fn event_size_limit_is_inclusive() {
        assert!(event_size("payload", 100, 100).is_ok());
        let err = event_size("payload", 101, 100).unwrap_err();
        assert_eq!(err.sqlstate, sqlstate::PROGRAM_LIMIT_EXCEEDED);
    }

    #[test]
    fn consumer_groups() {
        assert!(consumer_group(None, None).is_ok());
        assert!(consumer_group(Some(0), Some(1)).is_ok());
        assert!(consumer_group(Some(3), Some(4)).is_ok());
        for (member, size) in [
            (Some(4), Some(4)),
            (Some(-1), Some(4)),
            (Some(0), Some(0)),
            (Some(0), None),
            (None, Some(2)),
            (Some(0), Some(1025)),
        ] {
            let err = consumer_group(member, size).unwrap_err();
            assert_eq!(
                err.sqlstate,
                sqlstate::INVALID_PARAMETER_VALUE,
                "{member:?} {size:?}"
            );
        }
    }

    #[test]
    fn non_negative_numbers() {
        assert_eq!(non_negative("max_count", Some(0)), Ok(0));
        assert_eq!(non_negative("after_position", Some(7i64)), Ok(7));
        assert!(non_negative("max_count", Some(-1)).is_err());
        assert!(non_negative::<i32>("max_count", None).is_err());
    }

    #[test]
    fn ranges() {
        assert_eq!(in_range("max_count", 5, 0, 10), Ok(5));
        assert!(in_range("max_count", -1, 0, 10).is_err());
        assert!(in_range("max_count", 11, 0, 10).is_err());
    }
}
