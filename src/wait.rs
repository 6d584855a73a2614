//! Waiting for another request's page (`rcache_lock`): when memcached says another
//! request holds the page's lock (the placeholder it vivified), this request looks again
//! after a few milliseconds — a timer on the request, never a sleep — 5 ms, then 10, 20,
//! 40 and 50 ms between lookups, so a waiter gets the page within 50 ms of its store
//! (nginx's own cache lock looks every 500 ms). After `rcache_lock_timeout` it goes to
//! the fallback itself (not stored).

use core::ffi::c_void;

use ngx::core::Status;
use ngx::ffi::*;
use ngx::http::HttpModuleLocationConf;

use crate::lookup::Lookup;
use crate::HttpRcacheModule;

/// The first pause, doubled after every lookup up to [`LONGEST_PAUSE`].
const FIRST_PAUSE: ngx_msec_t = 5;
const LONGEST_PAUSE: ngx_msec_t = 50;

/// The pause before lookup number `waits + 1` (pure).
pub fn pause(waits: u32) -> ngx_msec_t {
    (FIRST_PAUSE << waits.min(4)).min(LONGEST_PAUSE)
}

/// Schedules the next lookup of `r`: `Some(NGX_DONE)` (the request stays, held by the
/// timer), or None once `rcache_lock_timeout` would be passed.
pub fn again(r: &mut ngx_http_request_t) -> Option<Status> {
    let lcf = HttpRcacheModule::location_conf(r)?;
    let lookup = Lookup::of(r)?;
    // SAFETY: nginx's cached clock, written by this thread.
    let now = unsafe { ngx_current_msec };
    let waits = lookup.waits.get();
    if waits == 0 {
        lookup.waiting_since.set(now);
    }
    let waited = now.wrapping_sub(lookup.waiting_since.get());
    let pause = pause(waits);
    // SAFETY: a live request has a live connection.
    let log = unsafe { (*r.connection).log };
    if waited + pause > lcf.lock_timeout {
        debug!(
            log,
            "rcache: lock: no page after {} ms: to the fallback", waited
        );
        return None;
    }
    // SAFETY: a zeroed event from the request's pool, which outlives the timer (the
    // request is held until it fires).
    let ev =
        unsafe { (ngx_pcalloc(r.pool, size_of::<ngx_event_t>()) as *mut ngx_event_t).as_mut() }?;
    ev.handler = Some(look_again);
    ev.data = ptr_of(r);
    ev.log = log;
    lookup.waits.set(waits + 1);
    // The timer's reference: dropped when it has started the next lookup.
    // SAFETY: the main request of a live request.
    let main = unsafe { &mut *r.main };
    crate::bitfield::hold(main);
    // SAFETY: an event of the live request.
    unsafe { ngx_add_timer(ev, pause) };
    debug!(
        log,
        "rcache: lock: another request renders the page; looking again in {} ms", pause
    );
    Some(Status::NGX_DONE)
}

fn ptr_of(r: &mut ngx_http_request_t) -> *mut c_void {
    core::ptr::from_mut(r).cast()
}

/// The waiter's timer: the lookup again, as the content phase starts it.
unsafe extern "C" fn look_again(ev: *mut ngx_event_t) {
    // SAFETY: the event again() armed; data is its request, held by the timer.
    let r = unsafe { (*ev).data as *mut ngx_http_request_t };
    // SAFETY: as above.
    let (c, restart) = unsafe { ((*r).connection, Lookup::of(&*r).and_then(|l| l.restart)) };
    let rc = match restart {
        // SAFETY: the request's lookup has finished; we hold a reference.
        Some(restart) => unsafe { restart(r) },
        None => Status::NGX_ERROR,
    };
    // SAFETY: drops the timer's reference (NGX_DONE) or ends the request; then what
    // nginx runs after any event of a request.
    unsafe {
        ngx_http_finalize_request(r, rc.into());
        ngx_http_run_posted_requests(c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_double_up_to_50_ms() {
        let pauses: Vec<_> = (0..7).map(pause).collect();
        assert_eq!(pauses, [5, 10, 20, 40, 50, 50, 50]);
        assert_eq!(pause(u32::MAX), 50);
    }
}
