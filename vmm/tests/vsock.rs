//! Hybrid vsock under real KVM, both ways, in the Firecracker convention:
//! the host dials a guest port through `CONNECT <port>` on the VMM's socket,
//! the guest dials host port P and lands on `<socket>_P`. 256 MiB each way
//! with a checksum, and 50 concurrent connections each way.

use std::io::Write;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use cocoon_tests::pattern::{checksum_stream, expected_reply as expected, send_to_guest};
use cocoon_tests::{
    build_output, busybox_initramfs_with, guest_probe, readable_within, require_hardware_kvm, tail,
    wait_for_text, wait_or_kill,
};
use cocoon_vmm_command::{Console, VmmCommand};

const VMM: &str = env!("CARGO_BIN_EXE_cocoon-vmm");
const BIG: u64 = 256 << 20;
const SMALL: u64 = 1 << 20;
const CONCURRENT: usize = 50;
/// Boot, then both transfers, on a host VM that may be busy.
const TRANSFER_LIMIT: Duration = Duration::from_secs(600);
const GUEST_PORT: u32 = 5000;
const HOST_PORT_BIG: u32 = 6000;
const HOST_PORT_MANY: u32 = 6001;

/// Host side of guest-initiated connections: answers each with
/// "<bytes> <checksum>" like the guest probe does. Bounded in time, so a guest
/// that opens fewer connections than expected fails the test, not hangs it.
fn serve_checksums(listener: UnixListener, connections: usize) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let handlers: Vec<_> = (0..connections)
            .map(|opened| {
                assert!(
                    readable_within(&listener, TRANSFER_LIMIT),
                    "the guest opened {opened} of {connections} connections"
                );
                let (mut stream, _) = listener.accept().expect("accept a guest connection");
                stream
                    .set_read_timeout(Some(TRANSFER_LIMIT))
                    .expect("read timeout");
                std::thread::spawn(move || {
                    let (bytes, sum) = checksum_stream(&mut stream).expect("read guest data");
                    stream
                        .write_all(format!("{bytes} {sum:016x}\n").as_bytes())
                        .unwrap_or_else(|e| panic!("reply after {bytes} bytes: {e}"));
                })
            })
            .collect();
        for handler in handlers {
            handler.join().expect("handler");
        }
    })
}

#[test]
#[ignore = "needs real KVM: runs inside tests/kvm-host (make kvm-test)"]
fn vsock_moves_data_both_ways_with_many_connections() {
    require_hardware_kvm();
    let scratch = tempfile::tempdir().unwrap();
    let uds: PathBuf = scratch.path().join("vsock.sock");
    let big_listener = UnixListener::bind(format!("{}_{HOST_PORT_BIG}", uds.display())).unwrap();
    let many_listener = UnixListener::bind(format!("{}_{HOST_PORT_MANY}", uds.display())).unwrap();
    let big_server = serve_checksums(big_listener, 1);
    let many_server = serve_checksums(many_listener, CONCURRENT);

    let script = format!(
        "probe listen {GUEST_PORT} {} &\n\
         listener=$!\n\
         probe send {HOST_PORT_BIG} {BIG}\n\
         probe send {HOST_PORT_MANY} {SMALL} {CONCURRENT}\n\
         wait $listener\n\
         echo VSOCK-GUEST-DONE\n\
         reboot -f",
        1 + CONCURRENT
    );
    let initrd = busybox_initramfs_with(scratch.path(), &script, &[(&guest_probe(), "/bin/probe")]);
    let console = scratch.path().join("console.log");
    let mut vmm = VmmCommand::new(build_output("vmlinux"))
        .initrd(&initrd)
        .memory_mib(512)
        .vcpus(2)
        .vsock(&uds)
        .vsock_cid(3)
        .console(Console::File(console.clone()))
        .command(Path::new(VMM))
        .stdin(Stdio::null())
        .spawn()
        .expect("cocoon-vmm starts");

    if let Err(error) = wait_for_text(&console, "PROBE-READY", Duration::from_secs(120)) {
        let _ = vmm.kill();
        panic!("guest listener: {error}");
    }
    let started = std::time::Instant::now();
    assert_eq!(
        send_to_guest(&uds, GUEST_PORT, BIG),
        expected(BIG),
        "256 MiB host -> guest"
    );
    let host_to_guest = started.elapsed();
    let senders: Vec<_> = (0..CONCURRENT)
        .map(|_| {
            let uds = uds.clone();
            std::thread::spawn(move || send_to_guest(&uds, GUEST_PORT, SMALL))
        })
        .collect();
    for sender in senders {
        assert_eq!(
            sender.join().unwrap(),
            expected(SMALL),
            "1 MiB host -> guest"
        );
    }

    let status = wait_or_kill(&mut vmm, Duration::from_secs(300));
    let text = std::fs::read_to_string(&console).unwrap_or_default();
    assert!(
        matches!(status, Ok(s) if s.success()),
        "VMM: {status:?}; console:\n{}",
        tail(&text, 30)
    );
    let replies: Vec<&str> = text.lines().filter(|l| l.contains("SENT")).collect();
    assert_eq!(
        replies.len(),
        1 + CONCURRENT,
        "guest senders: {replies:?}\n{}",
        tail(&text, 30)
    );
    let big_reply = format!("SENT 0 {BIG} REPLY {}", expected(BIG));
    assert!(
        replies.iter().any(|l| l.contains(&big_reply)),
        "256 MiB guest -> host: {replies:?}"
    );
    let small_ok = replies
        .iter()
        .filter(|l| l.contains(&format!("REPLY {}", expected(SMALL))))
        .count();
    assert_eq!(small_ok, CONCURRENT, "1 MiB guest -> host: {replies:?}");
    assert!(text.contains("VSOCK-GUEST-DONE"));
    // After the guest's own account, which says what went wrong if anything did.
    big_server.join().expect("256 MiB server");
    many_server.join().expect("1 MiB servers");
    eprintln!("vsock: 256 MiB host -> guest in {host_to_guest:?}");
}
