//! Threads of the VMM.
//!
//! All of them get 1 MiB stacks instead of Rust's 2 MiB default: on hosts with
//! transparent huge pages set to "always", a 2 MiB stack that happens to be
//! 2 MiB-aligned (as the ones mapped right below guest RAM are) is backed by
//! a whole huge page, 2 MiB of resident memory per thread for a few KiB used.

/// Stack size of every VMM thread.
pub const STACK_SIZE: usize = 1 << 20;

/// A thread builder with the VMM's stack size and `name`.
pub fn builder(name: impl Into<String>) -> std::thread::Builder {
    std::thread::Builder::new()
        .name(name.into())
        .stack_size(STACK_SIZE)
}
