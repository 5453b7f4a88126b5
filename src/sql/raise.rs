//! Raising a core [`Error`] as a PostgreSQL ERROR with its own SQLSTATE.
//!
//! pgrx's `PgSqlErrorCode` is a closed enum, so codes such as `ZA001` cannot
//! travel through its `ereport`. This is the one place that calls
//! PostgreSQL's `errstart`/`errfinish` itself.

use allsource_core::error::Error;
use std::ffi::{c_char, c_int, CString};

unsafe extern "C-unwind" {
    fn errstart(elevel: c_int, domain: *const c_char) -> bool;
    fn errcode(sqlerrcode: c_int) -> c_int;
    fn errmsg(fmt: *const c_char, ...) -> c_int;
    fn errdetail(fmt: *const c_char, ...) -> c_int;
    fn errhint(fmt: *const c_char, ...) -> c_int;
    fn errfinish(filename: *const c_char, lineno: c_int, funcname: *const c_char);
}

/// PostgreSQL's `MAKE_SQLSTATE`: five characters packed six bits each.
fn make_sqlstate(code: &str) -> c_int {
    code.bytes().enumerate().fold(0, |acc, (i, ch)| {
        acc | ((c_int::from(ch.wrapping_sub(b'0')) & 0x3F) << (6 * i))
    })
}

/// The five characters of a packed SQLSTATE (PostgreSQL's `unpack_sql_state`).
pub fn unpack_sqlstate(code: c_int) -> [u8; 5] {
    std::array::from_fn(|i| ((code >> (6 * i)) & 0x3F) as u8 + b'0')
}

fn c_text(text: &str) -> CString {
    CString::new(text.replace('\0', "\\0")).expect("NUL bytes were replaced")
}

/// Raises `error` at level ERROR; never returns.
///
/// The longjmp out of here skips Rust destructors, so call it as the last
/// step of a SQL function, after every value with a destructor is dropped:
/// this function drops its own before jumping.
pub fn raise(error: Error) -> ! {
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
    unsafe { errfinish(c"allsource".as_ptr(), line!() as c_int, c"raise".as_ptr()) };
    unreachable!("errfinish does not return at level ERROR")
}

/// The value, or the error raised.
pub fn or_raise<T>(result: allsource_core::error::Result<T>) -> T {
    match result {
        Ok(value) => value,
        Err(error) => raise(error),
    }
}

#[cfg(test)]
mod tests {
    use super::make_sqlstate;

    #[test]
    fn sqlstates_pack_like_postgres() {
        // ERRCODE_UNIQUE_VIOLATION is MAKE_SQLSTATE('2','3','5','0','5') = 0x50145C2 in PostgreSQL's headers.
        assert_eq!(
            make_sqlstate("23505"),
            pgrx::PgSqlErrorCode::ERRCODE_UNIQUE_VIOLATION as i32
        );
        assert_eq!(
            make_sqlstate("42501"),
            pgrx::PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE as i32
        );
        for code in ["ZA001", "40P01", "XX000", "53400"] {
            assert_eq!(
                &super::unpack_sqlstate(make_sqlstate(code)),
                code.as_bytes()
            );
        }
    }
}
