//! PID 1 duties: the file systems every guest needs, cgroup controllers for
//! the containers, hostname, loopback, and the console log.

use std::path::Path;

use anyhow::Context;
use nix::mount::{mount, MsFlags};

use crate::error::{AgentError, Result};

/// The kernel command-line word that makes the agent log verbosely.
const DEBUG_FLAG: &str = cocoon_protocol::GUEST_DEBUG_ARG;

/// Makes a fresh tmpfs the agent's root, leaving the initramfs behind.
///
/// The kernel's initial root file system can never be pivoted away from, and
/// libcontainer pivot_roots into every container; chroot instead would be
/// escapable. So, like switch_root(8): mount a tmpfs, move it over `/` and
/// chroot into it. Unlike switch_root there is nothing to exec: the agent
/// keeps running from its initramfs file (copying 9 MB and re-executing
/// cost ~0.3 s of every boot under emulation, and the copy's guest pages),
/// and the libcontainer helper is started through `/proc/self/exe`, which
/// reaches that file from any root.
pub fn leave_initramfs() -> anyhow::Result<()> {
    let new_root = Path::new("/root-tmpfs");
    std::fs::create_dir_all(new_root).context("creating the new root")?;
    mount(
        Some("tmpfs"),
        new_root,
        Some("tmpfs"),
        MsFlags::MS_NOSUID,
        Some("mode=0755"),
    )
    .context("mounting the new root")?;
    nix::unistd::chdir(new_root).context("entering the new root")?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .context("moving the new root to /")?;
    nix::unistd::chroot(".").context("chroot to the new root")?;
    nix::unistd::chdir("/").context("chdir /")?;
    for dir in ["dev", "proc", "sys", "run", "tmp"] {
        std::fs::create_dir_all(Path::new("/").join(dir))
            .with_context(|| format!("creating /{dir}"))?;
    }
    Ok(())
}

pub fn mount_file_systems() -> anyhow::Result<()> {
    let common = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let table: [(&str, &str, &str, MsFlags, Option<&str>); 8] = [
        ("proc", "/proc", "proc", common, None),
        ("sysfs", "/sys", "sysfs", common, None),
        (
            "devtmpfs",
            "/dev",
            "devtmpfs",
            MsFlags::MS_NOSUID,
            Some("mode=0755"),
        ),
        (
            "devpts",
            "/dev/pts",
            "devpts",
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
        ),
        ("shm", "/dev/shm", "tmpfs", common, Some("mode=1777")),
        (
            "cgroup2",
            "/sys/fs/cgroup",
            "cgroup2",
            common,
            Some("nsdelegate"),
        ),
        (
            "tmpfs",
            "/run",
            "tmpfs",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=0755"),
        ),
        (
            "tmpfs",
            "/tmp",
            "tmpfs",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=1777"),
        ),
    ];
    for (source, target, fstype, flags, data) in table {
        std::fs::create_dir_all(target).with_context(|| format!("creating {target}"))?;
        mount(Some(source), target, Some(fstype), flags, data)
            .with_context(|| format!("mounting {fstype} on {target}"))?;
    }
    // /dev/ptmx must be the devpts instance's, for ptys opened in the guest.
    let _ = std::fs::remove_file("/dev/ptmx");
    std::os::unix::fs::symlink("pts/ptmx", "/dev/ptmx").context("linking /dev/ptmx")?;
    Ok(())
}

/// Where the guest kernel's free page reporting takes its smallest block size
/// (a power of two of pages). Only there: Linux 6.1 overwrites the command
/// line's value when the balloon driver registers.
const PAGE_REPORTING_ORDER: &str = "/sys/module/page_reporting/parameters/page_reporting_order";

/// Has the kernel report free blocks from 128 KiB (order 5) up instead of
/// from a pageblock (4 MiB in our kernel): what a guest touches once and
/// frees (the initramfs, the freed kernel init sections and gaps) seldom
/// lies in whole 4 MiB blocks, and cocoon-vmm can only give back what the
/// guest reports. Smaller blocks would report (and later fault back) nearly
/// every page the guest frees.
pub fn report_smaller_free_blocks() -> anyhow::Result<()> {
    match std::fs::write(PAGE_REPORTING_ORDER, "5") {
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        result => result.with_context(|| format!("writing {PAGE_REPORTING_ORDER}")),
    }
}

/// Hands every controller the kernel has down to the containers' cgroups.
pub fn enable_cgroup_controllers() -> anyhow::Result<()> {
    let root = Path::new("/sys/fs/cgroup");
    let available = std::fs::read_to_string(root.join("cgroup.controllers"))
        .context("reading cgroup.controllers")?;
    let wanted: Vec<String> = available
        .split_whitespace()
        .map(|c| format!("+{c}"))
        .collect();
    std::fs::write(root.join("cgroup.subtree_control"), wanted.join(" "))
        .with_context(|| format!("enabling cgroup controllers {available:?}"))
}

pub fn set_hostname(name: &str) -> Result<()> {
    nix::unistd::sethostname(name)
        .map_err(|e| AgentError::InvalidArgument(format!("hostname {name:?}: {e}")))
}

/// Brings up the loopback interface (SIOCSIFFLAGS with IFF_UP).
pub fn bring_up_loopback() -> anyhow::Result<()> {
    let socket = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Inet,
        nix::sys::socket::SockType::Datagram,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )
    .context("opening a socket for interface set-up")?;
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (slot, byte) in request.ifr_name.iter_mut().zip(b"lo\0") {
        *slot = *byte as libc::c_char;
    }
    request.ifr_ifru.ifru_flags =
        (libc::IFF_UP | libc::IFF_LOOPBACK | libc::IFF_RUNNING) as libc::c_short;
    // SAFETY: SIOCSIFFLAGS reads one ifreq from the pointer, valid for the
    // call; the socket is open.
    let result = unsafe {
        libc::ioctl(
            std::os::fd::AsRawFd::as_raw_fd(&socket),
            libc::SIOCSIFFLAGS,
            &request,
        )
    };
    if result != 0 {
        return Err(std::io::Error::last_os_error()).context("bringing up lo");
    }
    Ok(())
}

/// Whether the kernel command line asks for verbose logs.
pub fn debug_requested() -> bool {
    kernel_arg_given(DEBUG_FLAG)
}

/// Whether the running kernel's command line holds `word` as a whole word.
pub fn kernel_arg_given(word: &str) -> bool {
    std::fs::read_to_string("/proc/cmdline").is_ok_and(|cmdline| cmdline_has(&cmdline, word))
}

/// Whether `cmdline` holds `word` as a whole word (not as part of another
/// argument, nor as a `word=value` argument).
pub fn cmdline_has(cmdline: &str, word: &str) -> bool {
    cmdline.split_whitespace().any(|given| given == word)
}

/// Logs go to the console (stderr): warnings only unless asked for more.
pub fn start_logging() {
    let level = if debug_requested() {
        tracing::Level::DEBUG
    } else {
        tracing::Level::WARN
    };
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_target(false)
        .without_time()
        .init();
}

pub fn uptime_ms() -> u64 {
    std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse::<f64>().ok())
        .map(|seconds| (seconds * 1000.0) as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_arguments_are_whole_words() {
        let cmdline = "console=ttyS0 quiet cocoon.template noreplace-smp\n";
        assert!(cmdline_has(cmdline, "cocoon.template"));
        assert!(cmdline_has(cmdline, "quiet"));
        assert!(cmdline_has("cocoon.template", "cocoon.template"));
        for other in [
            "",
            "quiet",
            "cocoon.templates",
            "xcocoon.template",
            "cocoon.template=1",
            "cocoon.debug",
            "foo=cocoon.template",
        ] {
            assert!(!cmdline_has(other, "cocoon.template"), "{other:?}");
        }
    }
}
