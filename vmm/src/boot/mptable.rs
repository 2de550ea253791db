//! The Intel MultiProcessor table (MP spec 1.4), through which Linux finds the
//! vCPUs, the IOAPIC and how legacy interrupts are routed, without ACPI.

use vm_memory::{Bytes, GuestAddress};

use crate::layout::{IOAPIC_ADDR, LAPIC_ADDR, LAST_IRQ, LOW_MEMORY_END, MAX_VCPUS, MPTABLE_ADDR};
use crate::memory::GuestMemory;

#[derive(Debug, thiserror::Error)]
pub enum MpTableError {
    #[error("{0} vCPUs requested; between 1 and {MAX_VCPUS} are supported")]
    VcpuCount(u8),
    #[error("the MP table does not fit below 640 KiB")]
    TooLarge,
    #[error("writing the MP table into guest memory failed: {0}")]
    Write(vm_memory::GuestMemoryError),
}

const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const CPU_ENABLED: u8 = 1;
const CPU_BOOTPROCESSOR: u8 = 2;
const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_INTSRC: u8 = 3;
const ENTRY_LINTSRC: u8 = 4;
const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;
const ISA_BUS_ID: u8 = 0;
/// "Family 6" feature signature with FPU and APIC flags, what Linux expects.
const CPU_SIGNATURE: u32 = (6 << 8) | (1 << 4);
const CPU_FEATURES: u32 = (1 << 0) | (1 << 9);

fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |sum, b| sum.wrapping_add(*b))
        .wrapping_neg()
}

/// The APIC ID of the IOAPIC: right after the vCPUs'.
pub fn ioapic_id(vcpus: u8) -> u8 {
    vcpus
}

/// Builds the floating pointer structure and configuration table for `vcpus`
/// processors, as they must appear at [`MPTABLE_ADDR`].
pub fn build(vcpus: u8) -> Result<Vec<u8>, MpTableError> {
    if vcpus == 0 || vcpus > MAX_VCPUS {
        return Err(MpTableError::VcpuCount(vcpus));
    }
    const FLOATING_LEN: usize = 16;
    const HEADER_LEN: usize = 44;
    let table_addr = MPTABLE_ADDR as u32 + FLOATING_LEN as u32;

    let mut entries = Vec::new();
    let mut count: u16 = 0;
    for cpu in 0..vcpus {
        let flags = CPU_ENABLED | if cpu == 0 { CPU_BOOTPROCESSOR } else { 0 };
        entries.extend_from_slice(&[ENTRY_PROCESSOR, cpu, APIC_VERSION, flags]);
        entries.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
        entries.extend_from_slice(&CPU_FEATURES.to_le_bytes());
        entries.extend_from_slice(&[0; 8]);
        count += 1;
    }
    entries.extend_from_slice(&[ENTRY_BUS, ISA_BUS_ID]);
    entries.extend_from_slice(b"ISA   ");
    count += 1;
    let ioapic = ioapic_id(vcpus);
    entries.extend_from_slice(&[ENTRY_IOAPIC, ioapic, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&IOAPIC_ADDR.to_le_bytes());
    count += 1;
    for irq in 0..=LAST_IRQ as u8 {
        // Every IOAPIC pin is an edge-triggered ISA interrupt: our devices
        // pulse their irqfd.
        entries.extend_from_slice(&[
            ENTRY_INTSRC,
            INT_TYPE_INT,
            0,
            0,
            ISA_BUS_ID,
            irq,
            ioapic,
            irq,
        ]);
        count += 1;
    }
    entries.extend_from_slice(&[ENTRY_LINTSRC, INT_TYPE_EXTINT, 0, 0, ISA_BUS_ID, 0, 0xff, 0]);
    entries.extend_from_slice(&[ENTRY_LINTSRC, INT_TYPE_NMI, 0, 0, ISA_BUS_ID, 0, 0xff, 1]);
    count += 2;

    let mut header = Vec::with_capacity(HEADER_LEN);
    header.extend_from_slice(b"PCMP");
    header.extend_from_slice(&((HEADER_LEN + entries.len()) as u16).to_le_bytes());
    header.push(4); // spec revision 1.4
    header.push(0); // checksum, filled below
    header.extend_from_slice(b"COCOON  ");
    header.extend_from_slice(b"MICROVM     ");
    header.extend_from_slice(&0u32.to_le_bytes()); // OEM table pointer
    header.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    header.extend_from_slice(&count.to_le_bytes());
    header.extend_from_slice(&LAPIC_ADDR.to_le_bytes());
    header.extend_from_slice(&0u32.to_le_bytes()); // extended table length, reserved
    let mut table = header;
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    let mut floating = Vec::with_capacity(FLOATING_LEN);
    floating.extend_from_slice(b"_MP_");
    floating.extend_from_slice(&table_addr.to_le_bytes());
    floating.push(1); // length in 16-byte units
    floating.push(4); // spec revision 1.4
    floating.push(0); // checksum, filled below
    floating.extend_from_slice(&[0; 5]); // feature bytes: a configuration table follows
    floating[10] = checksum(&floating);

    let mut all = floating;
    all.extend_from_slice(&table);
    if MPTABLE_ADDR + all.len() as u64 > LOW_MEMORY_END {
        return Err(MpTableError::TooLarge);
    }
    Ok(all)
}

/// Writes the MP table for `vcpus` processors into guest memory.
pub fn write(memory: &GuestMemory, vcpus: u8) -> Result<(), MpTableError> {
    let table = build(vcpus)?;
    memory
        .write_slice(&table, GuestAddress(MPTABLE_ADDR))
        .map_err(MpTableError::Write)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |s, b| s.wrapping_add(*b))
    }

    #[test]
    fn checksums_and_pointers_are_consistent() {
        for vcpus in [1, 2, MAX_VCPUS] {
            let table = build(vcpus).expect("table builds");
            assert_eq!(&table[0..4], b"_MP_");
            assert_eq!(sum(&table[..16]), 0, "floating pointer checksum");
            let pointer = u32::from_le_bytes(table[4..8].try_into().unwrap()) as u64;
            assert_eq!(pointer, MPTABLE_ADDR + 16);
            let config = &table[16..];
            assert_eq!(&config[0..4], b"PCMP");
            let length = u16::from_le_bytes([config[4], config[5]]) as usize;
            assert_eq!(length, config.len());
            assert_eq!(sum(config), 0, "configuration table checksum");
            let count = u16::from_le_bytes([config[34], config[35]]);
            assert_eq!(count as usize, vcpus as usize + 1 + 1 + 24 + 2);
            let processors = config[44..].chunks(20).take(vcpus as usize);
            for (id, entry) in processors.enumerate() {
                assert_eq!(entry[0], ENTRY_PROCESSOR);
                assert_eq!(entry[1] as usize, id);
                assert_eq!(entry[3] & CPU_BOOTPROCESSOR != 0, id == 0);
            }
        }
    }

    #[test]
    fn vcpu_count_is_bounded() {
        assert!(build(0).is_err());
        assert!(build(MAX_VCPUS + 1).is_err());
    }
}
