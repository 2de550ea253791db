//! Legacy devices of the microVM: the serial console and the i8042 reset line.

pub mod console_cap;
pub mod console_log;
pub mod i8042;
pub mod irq;
pub mod serial;
