//! A guest mounts a host directory over virtio-fs (served inside cocoon-vmm)
//! and uses it the way a container root file system is used; every change is
//! visible on the host, and host files are visible in the guest.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use cocoon_tests::{build_output, busybox_initramfs, require_hardware_kvm, run_vmm};

const VMM: &str = env!("CARGO_BIN_EXE_cocoon-vmm");

#[test]
#[ignore = "needs real KVM: runs inside tests/kvm-host (make kvm-test)"]
fn guest_uses_a_shared_directory_like_a_root_file_system() {
    require_hardware_kvm();
    let scratch = tempfile::tempdir().unwrap();
    let share = scratch.path().join("share");
    std::fs::create_dir(&share).unwrap();
    std::fs::write(share.join("from-host.txt"), "written on the host\n").unwrap();

    let script = "mkdir -p /mnt && mount -t virtiofs shared /mnt || echo MOUNT-FAILED\n\
                  echo \"HOST-FILE: $(cat /mnt/from-host.txt)\"\n\
                  echo guest-data > /mnt/from-guest.txt\n\
                  mkdir /mnt/dir && echo moved > /mnt/dir/a && mv /mnt/dir/a /mnt/dir/b\n\
                  ln -s from-guest.txt /mnt/link\n\
                  ln /mnt/from-guest.txt /mnt/hard\n\
                  chmod 0640 /mnt/from-guest.txt\n\
                  touch /mnt/gone && rm /mnt/gone\n\
                  dd if=/dev/zero of=/mnt/big bs=1M count=64 2>/dev/null\n\
                  echo \"BIG-SIZE: $(stat -c %s /mnt/big)\"\n\
                  sync\n\
                  umount /mnt && echo FS-DONE\n\
                  reboot -f";
    let initrd = busybox_initramfs(scratch.path(), script);
    let share_arg = format!("shared={}", share.display());
    let kernel = build_output("vmlinux");
    let run = run_vmm(
        Path::new(VMM),
        &[
            "--kernel",
            kernel.to_str().unwrap(),
            "--initrd",
            initrd.to_str().unwrap(),
            "--memory-mib",
            "256",
            "--share",
            &share_arg,
        ],
        Duration::from_secs(180),
    );
    run.assert_success();
    let console = &run.console;
    assert!(
        !console.contains("MOUNT-FAILED"),
        "mount failed:\n{console}"
    );
    assert!(
        console.contains("HOST-FILE: written on the host"),
        "{console}"
    );
    assert!(console.contains("BIG-SIZE: 67108864"), "{console}");
    assert!(console.contains("FS-DONE"), "{console}");

    assert_eq!(
        std::fs::read_to_string(share.join("from-guest.txt")).unwrap(),
        "guest-data\n"
    );
    assert_eq!(
        std::fs::read_to_string(share.join("dir/b")).unwrap(),
        "moved\n"
    );
    assert!(!share.join("dir/a").exists(), "rename left the old name");
    assert_eq!(
        std::fs::read_link(share.join("link")).unwrap(),
        Path::new("from-guest.txt")
    );
    let meta = std::fs::metadata(share.join("from-guest.txt")).unwrap();
    assert_eq!(meta.nlink(), 2, "hard link");
    assert_eq!(meta.permissions().mode() & 0o7777, 0o640, "chmod");
    assert!(!share.join("gone").exists(), "unlink");
    assert_eq!(
        std::fs::metadata(share.join("big")).unwrap().len(),
        64 << 20
    );
}
