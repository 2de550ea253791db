//! `cocoon-vmm` command line.

fn main() -> anyhow::Result<()> {
    if std::env::args().skip(1).any(|arg| arg == "--version") {
        println!("cocoon-vmm {}", cocoon_vmm::VERSION);
        return Ok(());
    }
    anyhow::bail!("cocoon-vmm {} cannot boot guests yet", cocoon_vmm::VERSION)
}
