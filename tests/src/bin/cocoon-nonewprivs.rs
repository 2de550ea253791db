//! `cocoon-nonewprivs`: the program of critest's `nonewprivs` test image, built
//! by the project (the image is installed setuid root in it): prints its
//! effective uid the way critest's NoNewPrivs specs expect, "Effective uid:
//! N". With no_new_privs set the setuid bit is ignored and N is the caller's.

fn main() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    println!("Effective uid: {euid}");
}
