//! Running Rust without holding Ruby's GVL, so other Ruby threads keep running while we
//! wait on PostgreSQL. A panic is caught inside the callback: unwinding across Ruby's C
//! frames would abort the process.

use magnus::{Error, Ruby};
use std::ffi::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr::null_mut;
use std::time::{Duration, Instant};

/// Longest stretch spent without the GVL before checking for Ruby interrupts (signals,
/// Thread#kill, Thread#raise); on Ruby 3.1 signals do not call an unblock function.
pub const SLICE: Duration = Duration::from_millis(100);

struct Call<F, R> {
    func: Option<F>,
    result: Option<std::thread::Result<R>>,
}

unsafe extern "C" fn trampoline<F: FnOnce() -> R, R>(data: *mut c_void) -> *mut c_void {
    // SAFETY: `data` is the `Call` that `without_gvl` keeps alive until this returns.
    let call = unsafe { &mut *(data as *mut Call<F, R>) };
    if let Some(func) = call.func.take() {
        call.result = Some(catch_unwind(AssertUnwindSafe(func)));
    }
    null_mut()
}

/// Runs `func` with the GVL released. `func` must not touch Ruby objects. Returns the
/// panic message as `Err` when `func` panicked.
pub fn without_gvl<F: FnOnce() -> R, R>(func: F) -> Result<R, String> {
    // rb_thread_call_without_gvl always runs the function.
    call(func, rb_sys::rb_thread_call_without_gvl)?.ok_or_else(|| "the call did not run".to_string())
}

/// Like `without_gvl`, but returns `Ok(None)` without running `func` when the thread has a
/// pending interrupt (`rb_thread_call_without_gvl2`); the caller then checks interrupts so
/// Thread#kill, Thread#raise and signals act.
pub fn without_gvl_interruptible<F: FnOnce() -> R, R>(func: F) -> Result<Option<R>, String> {
    call(func, rb_sys::rb_thread_call_without_gvl2)
}

type CallWithoutGvl = unsafe extern "C" fn(
    Option<unsafe extern "C" fn(*mut c_void) -> *mut c_void>,
    *mut c_void,
    rb_sys::rb_unblock_function_t,
    *mut c_void,
) -> *mut c_void;

fn call<F: FnOnce() -> R, R>(func: F, without_gvl: CallWithoutGvl) -> Result<Option<R>, String> {
    let mut call = Call {
        func: Some(func),
        result: None,
    };
    // SAFETY: the callback only touches `call`, which outlives the call; no Ruby API is used
    // without the GVL. No unblock function: waits are sliced (<= 100 ms) by the callers.
    unsafe {
        without_gvl(
            Some(trampoline::<F, R>),
            &mut call as *mut Call<F, R> as *mut c_void,
            None,
            null_mut(),
        );
    }
    match call.result {
        Some(Ok(value)) => Ok(Some(value)),
        Some(Err(payload)) => Err(tasker_worker::panic_message(payload.as_ref())),
        None => Ok(None),
    }
}

/// Waits without the GVL until `wait` returns something, `timeout` seconds pass, or
/// `stopped()` holds. `wait(slice)` blocks at most `slice` (never more than `SLICE`), and
/// interrupts are checked between calls, so signals, Thread#kill and Thread#raise act within
/// a slice. `what` names the call in the error raised when `wait` panics.
pub fn wait_in_slices<T>(
    ruby: &Ruby,
    what: &str,
    timeout: f64,
    wait: impl Fn(Duration) -> Option<T>,
    stopped: impl Fn() -> bool,
) -> Result<Option<T>, Error> {
    let deadline = Instant::now() + Duration::from_secs_f64(timeout.max(0.0));
    loop {
        let slice = deadline.saturating_duration_since(Instant::now()).min(SLICE);
        let got = without_gvl_interruptible(|| wait(slice))
            .map_err(|panic| crate::errors::internal(ruby, format!("{what} panicked: {panic}")))?;
        if let Some(Some(value)) = got {
            return Ok(Some(value));
        }
        ruby.thread_check_ints()?;
        if Instant::now() >= deadline || stopped() {
            return Ok(None);
        }
    }
}
