//! Stand-ins for two glibc functions, linked into the static init instead of
//! glibc's own (scripts/build checks that glibc's are absent from the binary).
//!
//! Why: the init is linked statically against glibc, because only the
//! `x86_64-unknown-linux-gnu` target is available where dockroot is built and
//! tested (no musl target). glibc's versions of these two pull in its message
//! catalog loader, locale loading, iconv and transliteration tables: about
//! 80 KB of a PID 1 that runs where no catalogs and no locales exist. Defining
//! the symbols here makes the static linker take ours and leave glibc's
//! objects out.

/// glibc's `__libc_start_main` references `__assert_fail`, whose object pulls in
/// gettext, locale loading and iconv (about 30 KB); nothing in this program asserts
/// through glibc, so this stands in for it: abort, as glibc's does after printing.
#[no_mangle]
pub extern "C" fn __assert_fail(_expr: *const u8, _file: *const u8, _line: u32, _func: *const u8) -> ! {
    std::process::abort()
}

/// glibc's `strerror` (which Rust's `io::Error` Display uses, through
/// `__xpg_strerror_r`) translates messages with `dcgettext`, whose object pulls
/// in the message catalog loader, iconv and transliteration tables (48 KB of
/// init). An initramfs has no catalogs: the untranslated English message is
/// the answer, as glibc's own would give.
#[no_mangle]
pub extern "C" fn __dcgettext(_domain: *const u8, msgid: *const u8, _category: i32) -> *const u8 {
    msgid
}

/// The public name of [`__dcgettext`].
#[no_mangle]
pub extern "C" fn dcgettext(domain: *const u8, msgid: *const u8, category: i32) -> *const u8 {
    __dcgettext(domain, msgid, category)
}
