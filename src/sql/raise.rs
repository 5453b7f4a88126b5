//! Raising a core [`Error`] as a PostgreSQL ERROR with its own SQLSTATE.
//!
//! pgrx's `PgSqlErrorCode` is a closed enum, so codes such as `ZA001` cannot
//! travel through its `ereport`. This is the one place that calls
//! PostgreSQL's `errstart`/`errfinish` itself.

use allsource_core::error::{Error, SqlState};
use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::{c_char, c_int, CStr, CString};
use std::panic::Location;

unsafe extern "C-unwind" {
    fn errstart(elevel: c_int, domain: *const c_char) -> bool;
    fn errcode(sqlerrcode: c_int) -> c_int;
    fn errmsg(fmt: *const c_char, ...) -> c_int;
    fn errdetail(fmt: *const c_char, ...) -> c_int;
    fn errhint(fmt: *const c_char, ...) -> c_int;
    fn errfinish(filename: *const c_char, lineno: c_int, funcname: *const c_char);
}

/// PostgreSQL's `MAKE_SQLSTATE`: five characters packed six bits each.
fn make_sqlstate(code: SqlState) -> c_int {
    code.as_bytes().iter().enumerate().fold(0, |acc, (i, &ch)| {
        acc | ((c_int::from(ch.wrapping_sub(b'0')) & 0x3F) << (6 * i))
    })
}

/// The five characters of a packed SQLSTATE (PostgreSQL's `unpack_sql_state`).
pub fn unpack_sqlstate(code: c_int) -> SqlState {
    SqlState::new(&std::array::from_fn(|i| {
        ((code >> (6 * i)) & 0x3F) as u8 + b'0'
    }))
}

thread_local! {
    /// Source file names as C strings, made once each: PostgreSQL keeps the
    /// pointer of an error's file name, as it would a `__FILE__`.
    static FILE_NAMES: RefCell<HashMap<&'static str, &'static CStr>> = RefCell::new(HashMap::new());
}

fn file_name(file: &'static str) -> &'static CStr {
    FILE_NAMES.with(|names| {
        *names.borrow_mut().entry(file).or_insert_with(|| {
            Box::leak(
                CString::new(file)
                    .expect("no NUL in a file name")
                    .into_boxed_c_str(),
            )
        })
    })
}

fn c_text(text: &str) -> CString {
    CString::new(text.replace('\0', "\\0")).expect("NUL bytes were replaced")
}

/// Raises `error` at level ERROR; never returns. The server log's LOCATION
/// is the caller's (through [`or_raise`], its caller's).
///
/// The longjmp out of here skips Rust destructors, so call it as the last
/// step of a SQL function, after every value with a destructor is dropped:
/// this function drops its own before jumping.
#[track_caller]
pub fn raise(error: Error) -> ! {
    let location = Location::caller();
    let file = file_name(location.file());
    let code = make_sqlstate(error.sqlstate);
    let message = c_text(&error.message);
    let detail = error.detail.as_deref().map(c_text);
    let hint = error.hint.as_deref().map(c_text);
    drop(error);
    // SAFETY: errstart at ERROR always returns true and starts an error
    // report; errmsg/errdetail/errhint copy their text into ErrorContext.
    unsafe {
        errstart(pgrx::PgLogLevel::ERROR as c_int, std::ptr::null());
        errcode(code);
        errmsg(c"%s".as_ptr(), message.as_ptr());
        if let Some(detail) = &detail {
            errdetail(c"%s".as_ptr(), detail.as_ptr());
        }
        if let Some(hint) = &hint {
            errhint(c"%s".as_ptr(), hint.as_ptr());
        }
    }
    drop((message, detail, hint));
    // SAFETY: nothing with a destructor is left in this frame; errfinish
    // longjmps to PostgreSQL's error handler, which aborts the transaction.
    unsafe { errfinish(file.as_ptr(), location.line() as c_int, std::ptr::null()) };
    unreachable!("errfinish does not return at level ERROR")
}

/// The value, or the error raised.
#[track_caller]
pub fn or_raise<T>(result: allsource_core::error::Result<T>) -> T {
    match result {
        Ok(value) => value,
        Err(error) => raise(error),
    }
}

#[cfg(test)]
mod tests {
    use super::make_sqlstate;
    use allsource_core::error::sqlstate;

    #[test]
    fn sqlstates_pack_like_postgres() {
        // ERRCODE_UNIQUE_VIOLATION is MAKE_SQLSTATE('2','3','5','0','5') = 0x50145C2 in PostgreSQL's headers.
        assert_eq!(
            make_sqlstate(sqlstate::UNIQUE_VIOLATION),
            pgrx::PgSqlErrorCode::ERRCODE_UNIQUE_VIOLATION as i32
        );
        assert_eq!(
            make_sqlstate(sqlstate::INSUFFICIENT_PRIVILEGE),
            pgrx::PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE as i32
        );
        for code in [
            sqlstate::WRONG_EXPECTED_VERSION,
            sqlstate::DEADLOCK_DETECTED,
            sqlstate::INTERNAL_ERROR,
            sqlstate::CONFIGURATION_LIMIT_EXCEEDED,
        ] {
            assert_eq!(super::unpack_sqlstate(make_sqlstate(code)), code);
        }
    }
}
