//! What `make` puts in build/guest is what the guest needs: a kernel with every
//! option our fragments ask for and a PVH entry point, and an initramfs whose
//! /init is the statically linked agent.

use std::collections::BTreeSet;
use std::process::Command;

use cocoon_tests::{build_output, repo_root};
use goblin::elf::{program_header::PT_INTERP, Elf};

#[test]
fn initramfs_init_is_a_static_executable() {
    let image = build_output("initramfs.img");
    let listing = Command::new("cpio")
        .args(["-it", "--quiet"])
        .stdin(std::fs::File::open(&image).expect("open initramfs"))
        .output()
        .expect("cpio runs");
    let names: BTreeSet<String> = String::from_utf8_lossy(&listing.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    assert!(
        names.contains("init"),
        "no /init in {}: {names:?}",
        image.display()
    );

    let init = Command::new("cpio")
        .args(["-i", "--quiet", "--to-stdout", "init"])
        .stdin(std::fs::File::open(&image).expect("open initramfs"))
        .output()
        .expect("cpio runs")
        .stdout;
    let elf = Elf::parse(&init).expect("/init is an ELF executable");
    assert!(elf.is_64, "/init is not a 64-bit executable");
    assert!(
        elf.interpreter.is_none() && !elf.program_headers.iter().any(|ph| ph.p_type == PT_INTERP),
        "/init asks for a dynamic loader ({:?}); the guest has none",
        elf.interpreter
    );
    assert!(
        elf.libraries.is_empty(),
        "/init needs shared libraries: {:?}",
        elf.libraries
    );
}

#[test]
fn kernel_config_has_every_requested_option() {
    let config =
        std::fs::read_to_string(build_output("kernel.config")).expect("read kernel.config");
    let resolved: BTreeSet<&str> = config.lines().collect();
    let fragments =
        std::fs::read_dir(repo_root().join("rootfs/kernel/fragments")).expect("fragments dir");
    let mut checked = 0;
    for fragment in fragments {
        let path = fragment.expect("fragment entry").path();
        let text = std::fs::read_to_string(&path).expect("read fragment");
        for line in text.lines() {
            if let Some(disabled) = line
                .strip_prefix("# ")
                .and_then(|l| l.strip_suffix(" is not set"))
            {
                assert!(
                    !config
                        .lines()
                        .any(|l| l.starts_with(&format!("{disabled}="))),
                    "{}: {disabled} should be off in kernel.config",
                    path.display()
                );
                checked += 1;
            } else if line.starts_with("CONFIG_") {
                assert!(
                    resolved.contains(line),
                    "{}: `{line}` is not in kernel.config",
                    path.display()
                );
                checked += 1;
            }
        }
    }
    assert!(
        checked > 50,
        "only {checked} options found in the fragments"
    );
}

#[test]
fn vmlinux_has_a_pvh_entry_point() {
    // XEN_ELFNOTE_PHYS32_ENTRY: the 32-bit entry that PVH-booting VMMs use.
    const PHYS32_ENTRY: u32 = 18;
    let vmlinux = std::fs::read(build_output("vmlinux")).expect("read vmlinux");
    let elf = Elf::parse(&vmlinux).expect("vmlinux is ELF");
    let has_pvh = elf
        .iter_note_headers(&vmlinux)
        .into_iter()
        .flatten()
        .flatten()
        .any(|note| note.name == "Xen" && note.n_type == PHYS32_ENTRY);
    assert!(has_pvh, "vmlinux has no PVH entry note (CONFIG_PVH)");
}
