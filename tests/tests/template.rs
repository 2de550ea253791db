//! Sandboxes started from VM templates (docs/architecture.md, "Templates"):
//! the first sandbox of a shape makes the template, the next ones start from
//! it, each with its own random stream, boot id and the host's clock; a
//! template other binaries made is replaced, never used; one a VM cannot
//! start from means booting, and goes.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use cocoon_tests::containerd::{ok, Containerd, Extra, RUNTIME};
use cocoon_tests::{build_output, release_dir, require_hardware_kvm};

// What a container reports about its guest: 16 random bytes, the boot id,
// the wall clock.
const IDENTITY: &str = "head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo; \
                        cat /proc/sys/kernel/random/boot_id; date +%s";

fn containerd(bin: &Path, kernel: &Path, templates: &Path) -> Containerd {
    Containerd::start_with(bin, kernel, &build_output("initramfs.img"), |_| Extra {
        cocoon_config: format!("template_dir = {templates:?}\n"),
        ..Extra::default()
    })
}

/// The templates in `dir`, each with the key it was made for.
fn templates(dir: &Path) -> Vec<(PathBuf, String)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found: Vec<_> = entries
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| {
            path.is_dir() && !path.file_name().unwrap().to_string_lossy().starts_with('.')
        })
        .map(|path| {
            let key = std::fs::read_to_string(path.join("key")).unwrap_or_default();
            (path, key)
        })
        .collect();
    found.sort();
    found
}

struct Identity {
    random: String,
    boot_id: String,
    clock_skew: u64,
}

fn identity(containerd: &Containerd, id: &str) -> Identity {
    let out = ok(
        containerd.run(RUNTIME, &["--rm"], id, &["sh", "-c", IDENTITY]),
        "ctr run",
    );
    let host_now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    let guest_now: u64 = lines[2].trim().parse().expect("date +%s");
    Identity {
        random: lines[0].to_string(),
        boot_id: lines[1].to_string(),
        clock_skew: host_now.abs_diff(guest_now),
    }
}

#[test]
#[ignore = "needs real KVM: runs inside tests/kvm-host (make kvm-test)"]
fn sandboxes_from_one_template_have_their_own_randomness_boot_id_and_the_hosts_clock() {
    require_hardware_kvm();
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path().join("templates");
    let containerd = containerd(&release_dir(), &build_output("vmlinux"), &dir);
    containerd.import_busybox();

    // The first sandbox of its shape makes the template, and starts from it.
    let first = identity(&containerd, "first");
    let made = templates(&dir);
    assert_eq!(made.len(), 1, "one template for one shape: {made:?}");
    for file in ["memory", "state.json", "key"] {
        assert!(
            made[0].0.join(file).is_file(),
            "{file} in {}",
            made[0].0.display()
        );
    }
    let second = identity(&containerd, "second");
    let third = identity(&containerd, "third");
    assert_eq!(
        containerd.sandboxes_from_templates(),
        3,
        "every sandbox starts from the template:\n{}",
        containerd.log()
    );
    let host_boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    let all = [&first, &second, &third];
    for (i, a) in all.iter().enumerate() {
        assert_ne!(a.boot_id.trim(), host_boot_id.trim());
        // A few seconds pass between the guest's `date` and ours.
        assert!(a.clock_skew <= 10, "guest clock {} s off", a.clock_skew);
        for b in &all[i + 1..] {
            assert_ne!(a.random, b.random, "two sandboxes share a random stream");
            assert_ne!(a.boot_id, b.boot_id, "two sandboxes share a boot id");
        }
    }
    assert_eq!(templates(&dir), made, "the template is kept and reused");

    // A template a VM cannot start from: the sandbox boots, the log says
    // why, and the template goes (the next sandbox makes a new one).
    std::fs::write(made[0].0.join("state.json"), "{ not a snapshot").unwrap();
    let booted = identity(&containerd, "fallback");
    assert_ne!(booted.boot_id, first.boot_id);
    let log = std::fs::read_to_string(containerd.dir().join("containerd.log")).unwrap_or_default();
    assert!(
        log.contains("failed, booting instead") && log.contains("not a snapshot state"),
        "{}",
        containerd.log()
    );
    assert_eq!(containerd.sandboxes_from_templates(), 3);
    assert!(templates(&dir).is_empty(), "{:?}", templates(&dir));
    containerd.assert_nothing_left();
}

#[test]
#[ignore = "needs real KVM: runs inside tests/kvm-host (make kvm-test)"]
fn a_template_of_other_binaries_is_replaced_not_used() {
    require_hardware_kvm();
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path().join("templates");
    let kernel = build_output("vmlinux");
    {
        let containerd = containerd(&release_dir(), &kernel, &dir);
        containerd.import_busybox();
        identity(&containerd, "original");
    }
    let original = templates(&dir);
    assert_eq!(original.len(), 1, "{original:?}");

    // Another kernel file (a copy: another inode), as after an upgrade.
    let other_kernel = scratch.path().join("vmlinux");
    std::fs::copy(&kernel, &other_kernel).unwrap();
    let containerd = containerd(&release_dir(), &other_kernel, &dir);
    containerd.import_busybox();
    identity(&containerd, "upgraded");
    let replaced = templates(&dir);
    assert_eq!(
        replaced.len(),
        1,
        "the stale template is removed: {replaced:?}"
    );
    assert_ne!(replaced[0], original[0]);
    assert!(
        replaced[0].1.contains(&other_kernel.display().to_string()),
        "{}",
        replaced[0].1
    );
    // Made for this kernel on first use, and used from then on.
    assert_eq!(
        containerd.sandboxes_from_templates(),
        1,
        "{}",
        containerd.log()
    );
    identity(&containerd, "again");
    assert_eq!(
        containerd.sandboxes_from_templates(),
        2,
        "{}",
        containerd.log()
    );
    assert_eq!(templates(&dir), replaced);
    containerd.assert_nothing_left();
}
