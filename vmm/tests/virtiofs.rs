//! A guest mounts a host directory over virtio-fs (served inside cocoon-vmm)
//! and uses it the way a container root file system is used; every change is
//! visible on the host, and host files are visible in the guest.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use cocoon_tests::{
    build_output, busybox_initramfs_with, guest_probe, require_hardware_kvm, run_vmm,
};
use cocoon_vmm_command::VmmCommand;

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
                  chown 1234:2345 /mnt/from-guest.txt\n\
                  echo 0123456789 > /mnt/mapped && probe mmap-write /mnt/mapped MAPPED\n\
                  probe xattr /mnt/from-guest.txt trusted.cocoon guest-value\n\
                  mkdir /mnt/many && i=0 && while [ $i -lt 300 ]; do : > /mnt/many/f$i; i=$((i+1)); done\n\
                  rm -r /mnt/many && echo RM-R-DONE\n\
                  echo \"BIG-SIZE: $(stat -c %s /mnt/big)\"\n\
                  sync\n\
                  umount /mnt && echo FS-DONE\n\
                  reboot -f";
    // trusted.* rather than user.*: the share sits on /tmp, a tmpfs, which
    // (before Linux 6.6) keeps no user.* attributes.
    let initrd = busybox_initramfs_with(scratch.path(), script, &[(&guest_probe(), "/bin/probe")]);
    let run = run_vmm(
        Path::new(VMM),
        VmmCommand::new(build_output("vmlinux"))
            .initrd(&initrd)
            .memory_mib(256)
            .share("shared", &share),
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
    assert!(console.contains("MMAP-WRITTEN"), "{console}");
    assert!(console.contains("XATTR guest-value"), "{console}");
    // A directory of more entries than one READDIR returns, removed while it
    // is read: on a tmpfs before Linux 6.6 (the host VM's), a READDIR that
    // seeks back skips entries and rmdir fails (whole_batches.rs).
    assert!(
        console.contains("RM-R-DONE") && !share.join("many").exists(),
        "rm -r of 300 files: {console}"
    );

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
    assert_eq!((meta.uid(), meta.gid()), (1234, 2345), "chown");
    assert_eq!(
        std::fs::read_to_string(share.join("mapped")).unwrap(),
        "MAPPED6789\n",
        "mmap write"
    );
    assert_eq!(
        host_xattr(&share.join("from-guest.txt"), "trusted.cocoon"),
        "guest-value"
    );
    assert!(!share.join("gone").exists(), "unlink");
    assert_eq!(
        std::fs::metadata(share.join("big")).unwrap().len(),
        64 << 20
    );
}

/// An extended attribute as the host sees it.
fn host_xattr(path: &Path, name: &str) -> String {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let name = std::ffi::CString::new(name).unwrap();
    let mut buf = vec![0u8; 256];
    // SAFETY: NUL-terminated strings; the buffer is writable for its length.
    let n = unsafe {
        libc::getxattr(
            path.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    assert!(n >= 0, "getxattr: {}", std::io::Error::last_os_error());
    String::from_utf8_lossy(&buf[..n as usize]).into_owned()
}
