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
