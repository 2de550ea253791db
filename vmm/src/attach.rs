//! Attaching virtio devices to a VM: each gets a 4 KiB MMIO window and an
//! IOAPIC pin of its own, ioeventfds for its queue notifications (so a
//! notification never leaves the kernel on the vCPU's path), and an entry on
//! the kernel command line that tells the guest where to find it.

use std::sync::{Arc, Mutex};

use kvm_ioctls::{IoEventAddress, VmFd};

use crate::bus::{Bus, BusDevice};
use crate::devices::irq::IrqLine;
use crate::layout::{FIRST_VIRTIO_IRQ, LAST_IRQ, VIRTIO_MMIO_BASE, VIRTIO_MMIO_SIZE};
use crate::memory::GuestMemory;
use crate::virtio::interrupt::VirtioInterrupt;
use crate::virtio::mmio::{kernel_cmdline_entry, MmioTransport, QUEUE_NOTIFY_OFFSET};
use crate::virtio::worker_thread::ParkedThreads;
use crate::virtio::VirtioDevice;

#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("too many virtio devices: only {} interrupt lines are available", LAST_IRQ - FIRST_VIRTIO_IRQ + 1)]
    OutOfInterrupts,
    #[error("creating the virtio-mmio transport: {0}")]
    Transport(std::io::Error),
    #[error("registering a queue ioeventfd: {0}")]
    IoEvent(kvm_ioctls::Error),
    #[error("{0}")]
    Bus(#[from] crate::bus::OverlapError),
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        MmioTransport::read(self, offset, data)
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        MmioTransport::write(self, offset, data)
    }
}

/// Hands out MMIO windows and interrupt lines in order.
pub struct VirtioAttacher {
    vm: Arc<VmFd>,
    memory: GuestMemory,
    next: u32,
    cmdline: Vec<String>,
    threads: Vec<ParkedThreads>,
    transports: Vec<Arc<Mutex<MmioTransport>>>,
}

impl VirtioAttacher {
    pub fn new(vm: Arc<VmFd>, memory: GuestMemory) -> Self {
        Self {
            vm,
            memory,
            next: 0,
            cmdline: Vec::new(),
            threads: Vec::new(),
            transports: Vec::new(),
        }
    }

    pub fn attach(
        &mut self,
        mut device: Box<dyn VirtioDevice>,
        bus: &mut Bus,
    ) -> Result<(), AttachError> {
        let irq = FIRST_VIRTIO_IRQ + self.next;
        if irq > LAST_IRQ {
            return Err(AttachError::OutOfInterrupts);
        }
        let base = VIRTIO_MMIO_BASE + u64::from(self.next) * VIRTIO_MMIO_SIZE;
        let interrupt = Arc::new(VirtioInterrupt::new(IrqLine::new(self.vm.clone(), irq)));
        let threads = device.threads();
        let driver_args = device.kernel_args();
        let transport = MmioTransport::new(device, self.memory.clone(), interrupt)
            .map_err(AttachError::Transport)?;
        for (queue, event) in transport.queue_events().iter().enumerate() {
            let address = IoEventAddress::Mmio(base + QUEUE_NOTIFY_OFFSET);
            self.vm
                .register_ioevent(event, &address, queue as u32)
                .map_err(AttachError::IoEvent)?;
        }
        let transport = Arc::new(Mutex::new(transport));
        bus.insert(base, VIRTIO_MMIO_SIZE, transport.clone())?;
        self.transports.push(transport);
        self.cmdline.push(kernel_cmdline_entry(base, irq));
        for arg in driver_args {
            if !self.cmdline.iter().any(|known| known == arg) {
                self.cmdline.push((*arg).to_string());
            }
        }
        self.threads.push(threads);
        self.next += 1;
        Ok(())
    }

    /// The threads of every device attached, to start before the guest runs.
    pub fn device_threads(&self) -> Vec<ParkedThreads> {
        self.threads.clone()
    }

    /// Every transport attached, in order (a snapshot saves and restores
    /// them by position).
    pub fn transports(&self) -> Vec<Arc<Mutex<MmioTransport>>> {
        self.transports.clone()
    }

    /// The `virtio_mmio.device=` entries for the kernel command line, and
    /// the parameters the devices' drivers need (each once).
    pub fn cmdline_entries(&self) -> &[String] {
        &self.cmdline
    }
}
