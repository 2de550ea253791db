//! The port I/O and MMIO buses as the vCPU loop drives them on a guest's
//! IN/OUT and MMIO exits: the serial console (16550A) on COM1 and the i8042
//! reset controller on the port bus, a virtio-mmio window (virtio-rng) on the
//! MMIO bus, wired as `vm.rs` wires them, and any access (address, width 0-8,
//! value), also straddling a device's range or unclaimed. Asserts:
//!
//! - nothing panics (bus, UART, i8042, transport, rng worker);
//! - an access not entirely inside one device's range reads as all ones;
//! - the console sink gets at most one byte per 1-byte write to COM1's data
//!   port, the console log's tail stays bounded, and the UART's receive FIFO
//!   never holds more than its 64 bytes (host input included);
//! - the reset event is raised exactly once per 1-byte write of 0xfe to the
//!   i8042 command port (0x64), and never otherwise.
//!
//! An input is a sequence of 8-byte operations `[kind, base, off0, off1,
//! width, v0, v1, v2]`; `kind % 6` selects a port write, port read, MMIO
//! write, MMIO read, host console input (`v0` bytes) or a guest memory write
//! (rings for the rng worker). The address is `BASES[base % len] + i16(off)`,
//! the width `WIDTHS[width % 6]`, the data `v0, v1, v2, v0, ...`.
#![no_main]

use std::io::{self, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};

use cocoon_vmm::bus::Bus;
use cocoon_vmm::devices::console_log::{ConsoleLog, ConsoleWriter};
use cocoon_vmm::devices::i8042::{ResetController, I8042_PORT, I8042_PORTS};
use cocoon_vmm::devices::serial::{SerialConsole, COM1_PORT, COM1_PORTS};
use cocoon_vmm::layout::{VIRTIO_MMIO_BASE, VIRTIO_MMIO_SIZE};
use cocoon_vmm::virtio::interrupt::VirtioInterrupt;
use cocoon_vmm::virtio::mmio::MmioTransport;
use cocoon_vmm::virtio::rng::Rng;
use cocoon_vmm::virtio::{GuestMemory, VirtioDevice};
use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const PIO_BASES: [u64; 6] = [COM1_PORT, I8042_PORT, 0x64, 0x3f0, 0, 0xffff];
const MMIO_BASES: [u64; 5] = [
    VIRTIO_MMIO_BASE,
    VIRTIO_MMIO_BASE + VIRTIO_MMIO_SIZE,
    VIRTIO_MMIO_BASE + 0x100,
    0,
    u64::MAX,
];
const WIDTHS: [usize; 6] = [1, 2, 4, 8, 0, 3];
const I8042_COMMAND: u64 = I8042_PORT + 4;
const CMD_RESET_CPU: u8 = 0xfe;
/// The 16550A's receive FIFO (vm-superio's FIFO_SIZE).
const UART_FIFO: usize = 64;
/// The console log keeps 8 KiB; its tail is that, lossily decoded (at most
/// three bytes per replaced invalid byte).
const MAX_TAIL: usize = 3 * 8 * 1024;
const MEM_SIZE: usize = 0x1_0000;
const MAX_OPS: usize = 1024;

// Counts what reaches the console sink.
struct Sink(Arc<AtomicUsize>);

impl Write for Sink {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.0.fetch_add(bytes.len(), Ordering::Relaxed);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

// The serial interrupt line, without a VM.
struct NoIrq;

impl vm_superio::Trigger for NoIrq {
    type E = io::Error;
    fn trigger(&self) -> io::Result<()> {
        Ok(())
    }
}

struct Machine {
    pio: Bus,
    mmio: Bus,
    serial: Arc<Mutex<SerialConsole<NoIrq>>>,
    resets: Receiver<&'static str>,
    sunk: Arc<AtomicUsize>,
    log: ConsoleLog,
    mem: GuestMemory,
}

impl Machine {
    fn new() -> Self {
        let sunk = Arc::new(AtomicUsize::new(0));
        let log = ConsoleLog::default();
        let writer = ConsoleWriter::new(Some(Box::new(Sink(Arc::clone(&sunk)))), log.clone());
        let serial = Arc::new(Mutex::new(SerialConsole::new(NoIrq, writer)));
        let (events, resets) = mpsc::channel();
        let mut pio = Bus::default();
        pio.insert(COM1_PORT, COM1_PORTS, serial.clone())
            .expect("COM1");
        let reset = ResetController::new(events, "reset");
        pio.insert(I8042_PORT, I8042_PORTS, Arc::new(Mutex::new(reset)))
            .expect("i8042");

        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).expect("memory");
        let irq = EventFd::new(EFD_NONBLOCK).expect("irq eventfd");
        let mut rng: Box<dyn VirtioDevice> = Box::new(Rng::new());
        // As the VM does before the guest runs (without seccomp filters).
        rng.threads().start(None).expect("device threads");
        let transport = MmioTransport::new(
            rng,
            mem.clone(),
            Arc::new(VirtioInterrupt::new(irq)),
        )
        .expect("transport");
        let mut mmio = Bus::default();
        mmio.insert(
            VIRTIO_MMIO_BASE,
            VIRTIO_MMIO_SIZE,
            Arc::new(Mutex::new(transport)),
        )
        .expect("virtio-mmio window");
        Self {
            pio,
            mmio,
            serial,
            resets,
            sunk,
            log,
            mem,
        }
    }
}

// Whether [address, address + width) lies inside one of `ranges`.
fn claimed(ranges: &[(u64, u64)], address: u64, width: usize) -> bool {
    ranges.iter().any(|&(base, len)| {
        address >= base
            && address - base < len
            && (address - base)
                .checked_add(width as u64)
                .is_some_and(|end| end <= len)
    })
}

fuzz_target!(|data: &[u8]| {
    let machine = Machine::new();
    let pio_ranges = [(COM1_PORT, COM1_PORTS), (I8042_PORT, I8042_PORTS)];
    let mmio_ranges = [(VIRTIO_MMIO_BASE, VIRTIO_MMIO_SIZE)];
    let mut resets_expected = 0usize;
    let mut thr_writes = 0usize;

    for op in data.chunks_exact(8).take(MAX_OPS) {
        let [kind, base, off0, off1, width, v0, v1, v2] = op.try_into().expect("8 bytes");
        let offset = i64::from(i16::from_le_bytes([off0, off1]));
        let width = WIDTHS[usize::from(width) % WIDTHS.len()];
        let value = [v0, v1, v2];
        let mut bytes: Vec<u8> = (0..width).map(|i| value[i % 3]).collect();
        match kind % 6 {
            kind @ (0 | 1) => {
                // Ports are 16 bits wide.
                let port = PIO_BASES[usize::from(base) % PIO_BASES.len()]
                    .wrapping_add_signed(offset)
                    & 0xffff;
                if kind == 0 {
                    if port == I8042_COMMAND && bytes == [CMD_RESET_CPU] {
                        resets_expected += 1;
                    }
                    if port == COM1_PORT && width == 1 {
                        thr_writes += 1;
                    }
                    machine.pio.write(port, &bytes);
                } else {
                    machine.pio.read(port, &mut bytes);
                    if !claimed(&pio_ranges, port, width) {
                        assert!(
                            bytes.iter().all(|&b| b == 0xff),
                            "port {port:#x}: {bytes:x?}"
                        );
                    }
                }
            }
            kind @ (2 | 3) => {
                let address =
                    MMIO_BASES[usize::from(base) % MMIO_BASES.len()].wrapping_add_signed(offset);
                if kind == 2 {
                    machine.mmio.write(address, &bytes);
                } else {
                    machine.mmio.read(address, &mut bytes);
                    if !claimed(&mmio_ranges, address, width) {
                        assert!(
                            bytes.iter().all(|&b| b == 0xff),
                            "MMIO {address:#x}: {bytes:x?}"
                        );
                    }
                }
            }
            4 => {
                let input: Vec<u8> = (0..v0).collect();
                let mut serial = machine.serial.lock().expect("serial");
                let room = serial.input_room();
                let taken = serial.enqueue_input(&input);
                assert!(taken <= room, "took {taken} bytes with room for {room}");
            }
            _ => {
                let at = u64::from(u16::from_le_bytes([off0, off1])) % (MEM_SIZE as u64 - 4);
                machine
                    .mem
                    .write_slice(&[v0, v1, v2, base], GuestAddress(at))
                    .expect("inside guest memory");
            }
        }
        let room = machine.serial.lock().expect("serial").input_room();
        assert!(room <= UART_FIFO, "receive FIFO room {room}");
        let sunk = machine.sunk.load(Ordering::Relaxed);
        assert!(
            sunk <= thr_writes,
            "{sunk} console bytes from {thr_writes} data port writes"
        );
    }

    let resets = machine.resets.try_iter().count();
    assert_eq!(resets, resets_expected, "reset events");
    let tail = machine.log.tail(usize::MAX);
    assert!(
        tail.len() <= MAX_TAIL,
        "console tail of {} bytes",
        tail.len()
    );
});
