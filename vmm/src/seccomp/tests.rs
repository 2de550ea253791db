use seccompiler::{SeccompAction, TargetArch};

use super::*;
use crate::virtio::{
    VIRTIO_ID_BALLOON, VIRTIO_ID_FS, VIRTIO_ID_NET, VIRTIO_ID_RNG, VIRTIO_ID_VSOCK,
};

const ROLES: [Role; 10] = [
    Role::Vcpu,
    Role::Signals,
    Role::Main,
    Role::TemplateVcpu,
    Role::TemplateMain,
    Role::Worker(VIRTIO_ID_RNG),
    Role::Worker(VIRTIO_ID_VSOCK),
    Role::Worker(VIRTIO_ID_FS),
    Role::Worker(VIRTIO_ID_BALLOON),
    Role::Worker(VIRTIO_ID_NET),
];

#[test]
fn every_role_compiles_for_x86_64() {
    for role in ROLES {
        let program = filter_for(role, TargetArch::x86_64, SeccompAction::KillProcess)
            .unwrap_or_else(|e| panic!("{role}: {e}"));
        // A BPF program holds at most 4096 instructions.
        assert!(
            !program.is_empty() && program.len() < 4096,
            "{role}: {} instructions",
            program.len()
        );
    }
}

#[test]
fn argument_rules_narrow_and_never_widen() {
    let mut rules = Rules::default();
    rules
        .allow(&[libc::SYS_read])
        .allow_arg(libc::SYS_read, 0, &[1])
        .allow_arg(libc::SYS_ioctl, 1, &[KVM_RUN])
        .allow_arg(libc::SYS_ioctl, 1, &[KVM_IRQ_LINE]);
    assert!(
        rules.syscalls[&libc::SYS_read].is_empty(),
        "still unconditional"
    );
    assert_eq!(rules.syscalls[&libc::SYS_ioctl].len(), 2);
}

// Runs `body` in a child process under `role`'s filter; returns its wait status.
fn in_child_under(role: Role, body: fn()) -> libc::c_int {
    let program = filter_for(role, TargetArch::x86_64, SeccompAction::KillProcess).unwrap();
    // SAFETY: the child only makes raw syscalls (no allocation, no locks)
    // before it exits, as is required after fork in a threaded process.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        if seccompiler::apply_filter(&program).is_err() {
            // SAFETY: ends the child at once, without running anything of the parent's.
            unsafe { libc::_exit(3) };
        }
        body();
        // SAFETY: as above.
        unsafe { libc::_exit(0) };
    }
    let mut status = 0;
    // SAFETY: waits for our own child and writes its status into `status`.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    status
}

#[test]
fn a_forbidden_syscall_kills_the_process_with_sigsys() {
    let status = in_child_under(Role::Vcpu, || {
        // SAFETY: getppid has no arguments and no effect; the filter forbids it.
        unsafe { libc::syscall(libc::SYS_getppid) };
    });
    assert!(libc::WIFSIGNALED(status), "status {status:#x}");
    assert_eq!(libc::WTERMSIG(status), libc::SIGSYS);
}

#[test]
fn a_forbidden_argument_kills_too() {
    // An ioctl that is not KVM_RUN or KVM_IRQ_LINE, on a vCPU.
    let status = in_child_under(Role::Vcpu, || {
        let mut n: libc::c_int = 0;
        // SAFETY: FIONREAD on stdin writes one int into the buffer we pass.
        unsafe { libc::ioctl(0, libc::FIONREAD, &mut n) };
    });
    assert!(libc::WIFSIGNALED(status), "status {status:#x}");
    assert_eq!(libc::WTERMSIG(status), libc::SIGSYS);
    // Executable memory, for any role.
    let status = in_child_under(Role::Worker(VIRTIO_ID_FS), || {
        // SAFETY: a fresh anonymous mapping, never used; the filter forbids it.
        unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_EXEC,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
    });
    assert!(libc::WIFSIGNALED(status), "status {status:#x}");
    assert_eq!(libc::WTERMSIG(status), libc::SIGSYS);
}

#[test]
fn allowed_syscalls_go_through() {
    for role in ROLES {
        let status = in_child_under(role, || {
            // SAFETY: writes nothing (length 0) to stderr; every role may write.
            unsafe { libc::write(2, std::ptr::null(), 0) };
        });
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "{role}: status {status:#x}"
        );
    }
}

#[test]
fn the_net_worker_may_set_tap_offloads_and_no_other_tun_ioctl() {
    let status = in_child_under(Role::Worker(VIRTIO_ID_NET), || {
        // SAFETY: TUNSETOFFLOAD takes its flags by value; on stdin it just fails.
        unsafe { libc::ioctl(0, libc::TUNSETOFFLOAD, 0 as libc::c_ulong) };
    });
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "status {status:#x}"
    );
    let status = in_child_under(Role::Worker(VIRTIO_ID_NET), || {
        // SAFETY: the filter kills the call before the kernel reads the
        // (null) argument.
        unsafe { libc::ioctl(0, libc::TUNSETIFF, std::ptr::null_mut::<u8>()) };
    });
    assert!(libc::WIFSIGNALED(status), "status {status:#x}");
    assert_eq!(libc::WTERMSIG(status), libc::SIGSYS);
}
