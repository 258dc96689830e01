//! SQLite's memory: its allocations come from the process's allocator (mimalloc) instead of
//! the C library's, and it keeps no memory statistics.
//!
//! The single writer thread allocates and frees for every statement it prepares, every row it
//! builds and every page it caches. With glibc's malloc and the statistics on (each call takes
//! SQLite's global memory mutex and asks for the block's size) that was about a sixth of the
//! writer thread's time under the end-to-end benchmark.

use std::ffi::{c_int, c_void};

use libsqlite3_sys as ffi;

unsafe extern "C" fn x_malloc(n: c_int) -> *mut c_void {
    // SQLite never asks for a negative size; 0 must still give a unique pointer or NULL.
    unsafe { libmimalloc_sys::mi_malloc(n.max(0) as usize) }
}

unsafe extern "C" fn x_free(p: *mut c_void) {
    unsafe { libmimalloc_sys::mi_free(p) }
}

unsafe extern "C" fn x_realloc(p: *mut c_void, n: c_int) -> *mut c_void {
    unsafe { libmimalloc_sys::mi_realloc(p, n.max(0) as usize) }
}

unsafe extern "C" fn x_size(p: *mut c_void) -> c_int {
    unsafe { libmimalloc_sys::mi_usable_size(p) as c_int }
}

unsafe extern "C" fn x_roundup(n: c_int) -> c_int {
    unsafe { libmimalloc_sys::mi_good_size(n.max(0) as usize) as c_int }
}

unsafe extern "C" fn x_init(_: *mut c_void) -> c_int {
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_shutdown(_: *mut c_void) {}

/// Configures SQLite's allocator. Must run before SQLite is first used (before any store
/// opens); later calls are refused by SQLite and change nothing.
pub fn configure() -> anyhow::Result<()> {
    let methods = ffi::sqlite3_mem_methods {
        xMalloc: Some(x_malloc),
        xFree: Some(x_free),
        xRealloc: Some(x_realloc),
        xSize: Some(x_size),
        xRoundup: Some(x_roundup),
        xInit: Some(x_init),
        xShutdown: Some(x_shutdown),
        pAppData: std::ptr::null_mut(),
    };
    // SAFETY: sqlite3_config is called before sqlite3_initialize, from main before any other
    // thread exists; SQLite copies the methods.
    unsafe {
        let rc = ffi::sqlite3_config(
            ffi::SQLITE_CONFIG_MALLOC,
            &methods as *const ffi::sqlite3_mem_methods,
        );
        anyhow::ensure!(rc == ffi::SQLITE_OK, "SQLITE_CONFIG_MALLOC refused: {rc}");
        let rc = ffi::sqlite3_config(ffi::SQLITE_CONFIG_MEMSTATUS, 0 as c_int);
        anyhow::ensure!(
            rc == ffi::SQLITE_OK,
            "SQLITE_CONFIG_MEMSTATUS refused: {rc}"
        );
    }
    Ok(())
}
