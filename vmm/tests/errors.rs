//! Mistakes on the command line get a message naming what is wrong, fast,
//! before any VM exists (no KVM needed).

use std::path::Path;

use cocoon_vmm_command::VmmCommand;

const VMM: &str = env!("CARGO_BIN_EXE_cocoon-vmm");

#[test]
fn a_missing_kernel_is_named_in_the_error() {
    let output = VmmCommand::new("/no/such/vmlinux")
        .command(Path::new(VMM))
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("/no/such/vmlinux"), "stderr: {stderr}");
}

#[test]
fn a_missing_initrd_is_named_in_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let kernel = dir.path().join("vmlinux");
    std::fs::write(&kernel, b"not a kernel").unwrap();
    let output = VmmCommand::new(&kernel)
        .initrd("/no/such/initrd.img")
        .command(Path::new(VMM))
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("/no/such/initrd.img"), "stderr: {stderr}");
}

#[test]
fn out_of_range_vcpus_are_refused() {
    let output = VmmCommand::new("/dev/null")
        .vcpus(0)
        .command(Path::new(VMM))
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("vCPUs"), "stderr: {stderr}");
}
