//! `cocoon-pause`: the pod sandbox's "pause" process in the CRI tests' pause
//! image (`sandbox_image`), built by the project so that no registry is
//! needed. Like Kubernetes' pause: it holds the pod's namespaces, reaps
//! whatever children it inherits as PID 1 of a shared PID namespace, and
//! exits 0 on SIGINT or SIGTERM.
//!
//! Rust rather than C: it is built static by `make build` like every other
//! project binary (no second toolchain or build rule), and it is small
//! enough that the image stays a few hundred KiB.

fn main() {
    // SAFETY: a zeroed sigset_t is a valid argument for sigemptyset, which
    // initialises it; every call gets a pointer to that local set.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: see above; the signals are valid constants.
    unsafe {
        libc::sigemptyset(&mut set);
        for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGCHLD] {
            libc::sigaddset(&mut set, signal);
        }
        // Blocked, they are taken with sigwait below and never run a handler.
        libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
    loop {
        let mut signal: libc::c_int = 0;
        // SAFETY: `set` is initialised; `signal` is a valid out pointer.
        if unsafe { libc::sigwait(&set, &mut signal) } != 0 {
            continue;
        }
        match signal {
            libc::SIGCHLD => reap(),
            _ => std::process::exit(0),
        }
    }
}

/// Collects every exited child (SIGCHLD may stand for several).
fn reap() {
    loop {
        let mut status = 0;
        // SAFETY: waitpid on any child, non-blocking, with a valid pointer.
        if unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) } <= 0 {
            return;
        }
    }
}
