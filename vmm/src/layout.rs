//! The guest-physical memory map of a Cocoon microVM (x86_64).
//!
//! ```text
//! 0x0000_0500  GDT, then IDT                 0x0000_7000  boot_params (zero page)
//! 0x0000_8ff0  boot stack (grows down)       0x0000_9000  PML4, PDPT, PD (identity map of 1 GiB)
//! 0x0002_0000  kernel command line           0x0009_fc00  MP table (reserved in e820)
//! 0x0010_0000  kernel (bzImage) / 16 MiB: vmlinux; initrd at the top of low RAM
//! 0xc000_0000  start of the 32-bit MMIO gap: virtio-mmio windows at 0xd000_0000
//! 0xfec0_0000  IOAPIC                        0xfee0_0000  LAPIC
//! 0x1_0000_0000  RAM above the gap, when the VM has more than 3 GiB
//! ```

pub const GDT_ADDR: u64 = 0x500;
pub const IDT_ADDR: u64 = 0x520;
pub const ZERO_PAGE_ADDR: u64 = 0x7000;
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
pub const PML4_ADDR: u64 = 0x9000;
pub const PDPT_ADDR: u64 = 0xa000;
pub const PD_ADDR: u64 = 0xb000;
pub const CMDLINE_ADDR: u64 = 0x2_0000;
/// The kernel rejects longer command lines (x86 COMMAND_LINE_SIZE).
pub const CMDLINE_MAX_SIZE: usize = 2048;

/// End of conventional memory usable by the guest; the MP table sits right
/// after it, where Linux looks for one (the last KiB below 640 KiB).
pub const EBDA_START: u64 = 0x9_fc00;
pub const MPTABLE_ADDR: u64 = EBDA_START;
pub const LOW_MEMORY_END: u64 = 0xa_0000;

/// Kernels are loaded at or above 1 MiB.
pub const HIMEM_START: u64 = 0x10_0000;

/// The 32-bit MMIO gap: no RAM between these two addresses.
pub const MMIO_GAP_START: u64 = 0xc000_0000;
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;

/// virtio-mmio device windows, one 4 KiB page each.
pub const VIRTIO_MMIO_BASE: u64 = 0xd000_0000;
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;

pub const IOAPIC_ADDR: u32 = 0xfec0_0000;
pub const LAPIC_ADDR: u32 = 0xfee0_0000;

/// Where KVM puts its TSS and identity-map pages (needed on Intel): the last
/// pages below the LAPIC, inside the MMIO gap.
pub const KVM_TSS_ADDR: u64 = 0xfffb_d000;
pub const KVM_IDENTITY_MAP_ADDR: u64 = 0xfffb_c000;

/// Legacy ISA interrupt of the serial port (COM1) and the first GSI we hand
/// to virtio devices; the in-kernel IOAPIC has 24 pins.
pub const SERIAL_IRQ: u32 = 4;
pub const FIRST_VIRTIO_IRQ: u32 = 5;
pub const LAST_IRQ: u32 = 23;

/// The MP table has room for this many processors in the last KiB below 640 KiB.
pub const MAX_VCPUS: u8 = 32;
