//! `#[pg_test]`s: run inside a real PostgreSQL by `cargo pgrx test`.
