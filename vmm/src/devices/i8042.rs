//! The i8042 keyboard controller, reduced to what a microVM needs: the guest
//! resets the machine by writing 0xfe to its command port (`reboot=k`), which
//! ends the VM.

use std::sync::mpsc::Sender;

use crate::bus::BusDevice;

pub const I8042_PORT: u64 = 0x60;
pub const I8042_PORTS: u64 = 5;
const COMMAND_OFFSET: u64 = 4;
const CMD_RESET_CPU: u8 = 0xfe;

pub struct ResetController<E: Clone + Send> {
    events: Sender<E>,
    on_reset: E,
}

impl<E: Clone + Send> ResetController<E> {
    pub fn new(events: Sender<E>, on_reset: E) -> Self {
        Self { events, on_reset }
    }
}

impl<E: Clone + Send> BusDevice for ResetController<E> {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // Status 0: no data waiting, input buffer empty (ready for commands).
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == COMMAND_OFFSET && data == [CMD_RESET_CPU] {
            let _ = self.events.send(self.on_reset.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_command_raises_the_event_and_nothing_else_does() {
        let (tx, rx) = std::sync::mpsc::channel();
        let mut controller = ResetController::new(tx, "reset");
        controller.write(0, &[CMD_RESET_CPU]);
        controller.write(COMMAND_OFFSET, &[0xd1]);
        assert!(rx.try_recv().is_err());
        controller.write(COMMAND_OFFSET, &[CMD_RESET_CPU]);
        assert_eq!(rx.try_recv(), Ok("reset"));
    }
}
