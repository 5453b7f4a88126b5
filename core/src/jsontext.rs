//! PostgreSQL's jsonb text output, written from a `serde_json::Value`.
//!
//! jsonb prints `{"a": 1, "b": [1, 2]}`: a space after every `,` and `:`, keys
//! in jsonb's order, numbers as numeric prints them. A value parsed from
//! jsonb's own output (serde_json with `preserve_order` and
//! `arbitrary_precision`) keeps that order and those digits, so writing it with
//! these separators gives back exactly what `payload::text` returns. That text
//! is what the checksum covers and what the size limit measures.

use serde::Serialize;
use serde_json::ser::{Formatter, Serializer};
use serde_json::Value;
use std::io;

/// serde_json's compact output plus jsonb's spaces.
struct JsonbFormatter;

impl Formatter for JsonbFormatter {
    fn begin_array_value<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> io::Result<()> {
        if first {
            Ok(())
        } else {
            w.write_all(b", ")
        }
    }

    fn begin_object_key<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> io::Result<()> {
        if first {
            Ok(())
        } else {
            w.write_all(b", ")
        }
    }

    fn begin_object_value<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        w.write_all(b": ")
    }
}

/// The jsonb text of `value`.
pub fn jsonb_text(value: &Value) -> String {
    let mut out = Vec::with_capacity(128);
    let mut serializer = Serializer::with_formatter(&mut out, JsonbFormatter);
    value
        .serialize(&mut serializer)
        .expect("serialising a JSON value into memory cannot fail");
    String::from_utf8(out).expect("serde_json writes UTF-8")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(jsonb_output: &str) {
        let value: Value = serde_json::from_str(jsonb_output).unwrap();
        assert_eq!(jsonb_text(&value), jsonb_output);
    }

    /// Each string is what PostgreSQL 15 prints for `'…'::jsonb::text`.
    #[test]
    fn reproduces_jsonb_output() {
        roundtrip(r#"{"a": 1, "b": [1, 2, {"c": null}]}"#);
        roundtrip(r#"{}"#);
        roundtrip(r#"[]"#);
        roundtrip(r#"[[], {}, ""]"#);
        roundtrip(r#""plain string""#);
        roundtrip(r#"null"#);
        roundtrip(r#"true"#);
        // numeric keeps its scale and digits; arbitrary_precision keeps them too.
        roundtrip(r#"{"n": 1.50, "big": 123456789012345678901234567890, "neg": -0.001}"#);
        // jsonb orders keys by length, then bytes; preserve_order keeps that order.
        roundtrip(r#"{"b": 1, "aa": 2, "abc": 3}"#);
        // escapes: quote, backslash, the short forms, other controls as \u00xx.
        roundtrip(r#""q\" b\\ \b\f\n\r\t \u0001 \u001f / é ☃ 😀""#);
    }
}
