//! COM1: a 16550A UART (vm-superio) on port 0x3f8 with a working IRQ 4, so
//! the guest's interrupt-driven console never stalls.

use vm_superio::serial::{NoEvents, SerialState};
use vm_superio::{Serial, Trigger};

use super::console_log::ConsoleWriter;
use super::irq::IrqLine;
use crate::bus::BusDevice;
use crate::snapshot::SerialRegisters;

pub const COM1_PORT: u64 = 0x3f8;
pub const COM1_PORTS: u64 = 8;

/// The UART behind its interrupt line: KVM's [`IrqLine`] in a VM, anything
/// else in tests and fuzz targets (which have no VM).
pub struct SerialConsole<T: Trigger = IrqLine> {
    uart: Serial<T, NoEvents, ConsoleWriter>,
}

impl<T: Trigger> SerialConsole<T> {
    pub fn new(irq: T, writer: ConsoleWriter) -> Self {
        Self {
            uart: Serial::new(irq, writer),
        }
    }

    /// A UART in the state a snapshot saved (see [`saved`](Self::saved)).
    pub fn from_saved(
        irq: T,
        writer: ConsoleWriter,
        saved: &SerialRegisters,
    ) -> Result<Self, String> {
        let state = SerialState {
            baud_divisor_low: saved.baud_divisor_low,
            baud_divisor_high: saved.baud_divisor_high,
            interrupt_enable: saved.interrupt_enable,
            interrupt_identification: saved.interrupt_identification,
            line_control: saved.line_control,
            line_status: saved.line_status,
            modem_control: saved.modem_control,
            modem_status: saved.modem_status,
            scratch: saved.scratch,
            in_buffer: saved.in_buffer.clone(),
        };
        let uart = Serial::from_state(&state, irq, NoEvents, writer)
            .map_err(|error| format!("{error:?}"))?;
        Ok(Self { uart })
    }

    /// The UART's registers and receive FIFO, for a snapshot.
    pub fn saved(&self) -> SerialRegisters {
        let state = self.uart.state();
        SerialRegisters {
            baud_divisor_low: state.baud_divisor_low,
            baud_divisor_high: state.baud_divisor_high,
            interrupt_enable: state.interrupt_enable,
            interrupt_identification: state.interrupt_identification,
            line_control: state.line_control,
            line_status: state.line_status,
            modem_control: state.modem_control,
            modem_status: state.modem_status,
            scratch: state.scratch,
            in_buffer: state.in_buffer,
        }
    }

    /// Feeds host input (e.g. a terminal) to the guest; returns how much fit.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        self.uart.enqueue_raw_bytes(bytes).unwrap_or(0)
    }

    /// Room left in the guest's receive FIFO (bounded by the UART: 64 bytes).
    pub fn input_room(&self) -> usize {
        self.uart.fifo_capacity()
    }
}

impl<T: Trigger + Send> BusDevice for SerialConsole<T> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if data.len() == 1 && offset < COM1_PORTS {
            data[0] = self.uart.read(offset as u8);
        } else {
            data.fill(0xff);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if data.len() == 1 && offset < COM1_PORTS {
            if let Err(error) = self.uart.write(offset as u8, data[0]) {
                tracing::debug!(?error, "serial write");
            }
        }
    }
}
