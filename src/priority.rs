//! Thread priorities: bulk work (signature checks on rayon's pool, mining)
//! yields the CPU to threads that answer (the network, REST), so a wallet's
//! request or a peer's ping waits for no block on a busy machine. On an idle
//! machine bulk work still gets every core; the nice value only decides who
//! runs first when both want to.

/// Nice value of bulk-work threads: a thread at nice 5 weighs a third of
/// one at 0 in Linux's scheduler, so under full load the answering threads
/// win most slices without starving validation (a REST flood slows a
/// catch-up, it cannot stop it).
pub const BULK_WORK_NICE: i32 = 5;

/// Lowers the calling thread's priority to [`BULK_WORK_NICE`]. On Linux
/// the nice value is per thread; elsewhere this does nothing.
pub fn lower_current_thread() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: gettid and setpriority take and return plain integers and
        // touch no memory of ours.
        let result = unsafe {
            let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
            libc::setpriority(libc::PRIO_PROCESS, tid, BULK_WORK_NICE)
        };
        if result != 0 {
            tracing::debug!(
                error = %std::io::Error::last_os_error(),
                "could not lower a bulk-work thread's priority"
            );
        }
    }
}

/// Makes rayon's global pool (signature checks of blocks and transactions)
/// bulk work. Does nothing if the pool already exists.
pub fn lower_global_pool() {
    let _ = rayon::ThreadPoolBuilder::new()
        .thread_name(|i| format!("validate-{i}"))
        .start_handler(|_| lower_current_thread())
        .build_global();
}

/// How long a bulk-work thread runs before it offers the CPU again
/// ([`bulk_checkpoint`]).
pub const BULK_TURN: std::time::Duration = std::time::Duration::from_micros(250);

/// Called by bulk work between small units (a signature check, a chunk of
/// the UTXO digest): once the thread has run [`BULK_TURN`] since its last
/// offer, it offers the CPU to whatever waits for it (`sched_yield`). On a
/// kernel without wake-up preemption (PREEMPT_NONE or lazy preemption, the
/// usual server configuration) a REST worker or the protocol thread woken
/// while validation fills every core otherwise waits for the next tick (4
/// ms at HZ=250). With nothing waiting the yield returns at once; the
/// thread's share of the CPU is still its nice value's.
pub fn bulk_checkpoint() {
    thread_local! {
        static LAST_OFFER: std::cell::Cell<Option<std::time::Instant>> =
            const { std::cell::Cell::new(None) };
    }
    LAST_OFFER.with(|last| {
        let now = std::time::Instant::now();
        match last.get() {
            Some(at) if turn_is_over(at, now) => {
                std::thread::yield_now();
                #[cfg(test)]
                tests::OFFERS.with(|n| n.set(n.get() + 1));
                last.set(Some(std::time::Instant::now()));
            }
            Some(_) => {}
            None => last.set(Some(now)),
        }
    });
}

/// Whether a bulk-work thread that last offered the CPU `at` has had its
/// turn by `now`.
fn turn_is_over(at: std::time::Instant, now: std::time::Instant) -> bool {
    now.saturating_duration_since(at) >= BULK_TURN
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    thread_local! {
        /// Offers made by this thread's `bulk_checkpoint` calls.
        pub(super) static OFFERS: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
    }

    #[test]
    fn a_turn_ends_after_bulk_turn() {
        let at = Instant::now();
        assert!(!turn_is_over(at, at));
        assert!(!turn_is_over(at, at + BULK_TURN - Duration::from_nanos(1)));
        assert!(turn_is_over(at, at + BULK_TURN));
        // A clock read before `at` (another thread's) is no turn at all.
        assert!(!turn_is_over(at + BULK_TURN, at));
    }

    #[test]
    fn bulk_work_offers_the_cpu_once_per_turn() {
        std::thread::spawn(|| {
            // Calls far more often than turns end, for ten turns.
            let started = Instant::now();
            let mut calls = 0u32;
            while started.elapsed() < BULK_TURN * 10 {
                bulk_checkpoint();
                calls += 1;
            }
            let elapsed = started.elapsed();
            let offers = OFFERS.with(|n| n.get());
            let most = (elapsed.as_micros() / BULK_TURN.as_micros()) as u32;
            assert!(offers >= 1, "no offer in {elapsed:?}");
            assert!(offers <= most, "{offers} offers in {elapsed:?}");
            assert!(calls > offers * 10, "{calls} calls, {offers} offers");
        })
        .join()
        .unwrap();
    }
}
