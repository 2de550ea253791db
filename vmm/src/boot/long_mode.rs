//! What a vCPU needs to start directly in 64-bit mode: a GDT with flat code
//! and data segments, an empty IDT, and page tables identity-mapping the first
//! GiB with 2 MiB pages (the kernel builds its own right away).

use kvm_bindings::kvm_segment;
use vm_memory::{Bytes, GuestAddress};

use super::BootError;
use crate::layout::{GDT_ADDR, IDT_ADDR, PDPT_ADDR, PD_ADDR, PML4_ADDR};
use crate::memory::GuestMemory;

/// GDT entries: null, 64-bit code, data, TSS (the flags/limit encoding used by
/// every Linux loader).
pub const GDT: [u64; 4] = [
    0,
    gdt_entry(0xa09b, 0, 0xfffff),
    gdt_entry(0xc093, 0, 0xfffff),
    gdt_entry(0x808b, 0, 0xfffff),
];
pub const CODE_SELECTOR: u16 = 1 << 3;
pub const DATA_SELECTOR: u16 = 2 << 3;
pub const TSS_SELECTOR: u16 = 3 << 3;

const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    (((base as u64) & 0xff00_0000) << (56 - 24))
        | (((flags as u64) & 0x0000_f0ff) << 40)
        | (((limit as u64) & 0x000f_0000) << (48 - 16))
        | (((base as u64) & 0x00ff_ffff) << 16)
        | ((limit as u64) & 0x0000_ffff)
}

/// The KVM segment register value for GDT entry `index`.
pub fn segment(index: u16) -> kvm_segment {
    let entry = GDT[index as usize];
    let base = ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000);
    let limit_raw = ((entry & 0xffff) | ((entry >> 32) & 0x000f_0000)) as u32;
    let granularity = ((entry >> 55) & 1) as u8;
    // With 4 KiB granularity the limit counts pages.
    let limit = if granularity == 1 {
        (limit_raw << 12) | 0xfff
    } else {
        limit_raw
    };
    kvm_segment {
        base,
        limit,
        selector: index * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g: granularity,
        avl: ((entry >> 52) & 1) as u8,
        unusable: if (entry >> 47) & 1 == 1 { 0 } else { 1 },
        padding: 0,
    }
}

/// Writes the GDT, the IDT and the identity-mapping page tables.
pub fn write_tables(memory: &GuestMemory) -> Result<(), BootError> {
    let fail = |what: &'static str| {
        move |error: vm_memory::GuestMemoryError| BootError::GuestMemory {
            what,
            reason: error.to_string(),
        }
    };
    for (index, entry) in GDT.iter().enumerate() {
        memory
            .write_obj(*entry, GuestAddress(GDT_ADDR + 8 * index as u64))
            .map_err(fail("GDT"))?;
    }
    memory
        .write_obj(0u64, GuestAddress(IDT_ADDR))
        .map_err(fail("IDT"))?;
    // PML4[0] -> PDPT, PDPT[0] -> PD, PD[i] -> 2 MiB page i (present, writable, huge).
    memory
        .write_obj(PDPT_ADDR | 0x03, GuestAddress(PML4_ADDR))
        .map_err(fail("page tables"))?;
    memory
        .write_obj(PD_ADDR | 0x03, GuestAddress(PDPT_ADDR))
        .map_err(fail("page tables"))?;
    for i in 0..512u64 {
        memory
            .write_obj((i << 21) | 0x83, GuestAddress(PD_ADDR + i * 8))
            .map_err(fail("page tables"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_decode_the_gdt() {
        let code = segment(1);
        assert_eq!(
            (code.l, code.db, code.present, code.s, code.type_),
            (1, 0, 1, 1, 0xb)
        );
        assert_eq!(code.limit, 0xffff_ffff);
        let data = segment(2);
        assert_eq!((data.l, data.db, data.type_), (0, 1, 0x3));
        let tss = segment(3);
        assert_eq!((tss.s, tss.type_), (0, 0xb));
    }
}
