//! Dispatch of the guest's port I/O and MMIO accesses to devices.
//!
//! Accesses nobody claims read as all ones and are otherwise ignored, like on
//! real hardware; the guest probes plenty of ports that a microVM lacks.

use std::sync::{Arc, Mutex};

/// A device on the port I/O or MMIO bus. `offset` is relative to the start of
/// the range the device was added with; `data` is the access (1-8 bytes).
pub trait BusDevice: Send {
    fn read(&mut self, offset: u64, data: &mut [u8]);
    fn write(&mut self, offset: u64, data: &[u8]);
}

struct Range {
    base: u64,
    len: u64,
    device: Arc<Mutex<dyn BusDevice>>,
}

/// An address space (ports or MMIO) with non-overlapping device ranges.
#[derive(Default)]
pub struct Bus {
    ranges: Vec<Range>,
}

#[derive(Debug, thiserror::Error)]
#[error("bus range {base:#x}+{len:#x} overlaps another device")]
pub struct OverlapError {
    pub base: u64,
    pub len: u64,
}

impl Bus {
    pub fn insert(
        &mut self,
        base: u64,
        len: u64,
        device: Arc<Mutex<dyn BusDevice>>,
    ) -> Result<(), OverlapError> {
        let end = base.checked_add(len).ok_or(OverlapError { base, len })?;
        if len == 0
            || self
                .ranges
                .iter()
                .any(|r| base < r.base + r.len && r.base < end)
        {
            return Err(OverlapError { base, len });
        }
        self.ranges.push(Range { base, len, device });
        Ok(())
    }

    fn find(&self, address: u64, size: usize) -> Option<(&Range, u64)> {
        let range = self
            .ranges
            .iter()
            .find(|r| address >= r.base && address - r.base < r.len)?;
        let offset = address - range.base;
        // An access must lie entirely inside the device's range.
        (offset.checked_add(size as u64)? <= range.len).then_some((range, offset))
    }

    pub fn read(&self, address: u64, data: &mut [u8]) {
        match self.find(address, data.len()) {
            Some((range, offset)) => lock(&range.device).read(offset, data),
            None => data.fill(0xff),
        }
    }

    pub fn write(&self, address: u64, data: &[u8]) {
        if let Some((range, offset)) = self.find(address, data.len()) {
            lock(&range.device).write(offset, data);
        }
    }
}

/// Locks a device; a device whose lock was poisoned by a panicking vCPU thread
/// is still used (its state is plain data, and the VM is going down anyway).
fn lock(device: &Mutex<dyn BusDevice>) -> std::sync::MutexGuard<'_, dyn BusDevice + 'static> {
    device
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder {
        writes: Vec<(u64, Vec<u8>)>,
    }

    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.writes.push((offset, data.to_vec()));
        }
    }

    #[test]
    fn dispatches_by_range_and_rejects_straddling_accesses() {
        let device = Arc::new(Mutex::new(Recorder::default()));
        let mut bus = Bus::default();
        bus.insert(0x3f8, 8, device.clone()).unwrap();
        let mut data = [0u8; 1];
        bus.read(0x3fa, &mut data);
        assert_eq!(data, [2]);
        bus.read(0x80, &mut data);
        assert_eq!(data, [0xff], "unclaimed ports read as all ones");
        let mut wide = [0u8; 4];
        bus.read(0x3fe, &mut wide);
        assert_eq!(
            wide, [0xff; 4],
            "an access crossing the range end is not dispatched"
        );
        bus.write(0x3f9, &[7]);
        assert_eq!(device.lock().unwrap().writes, vec![(1, vec![7])]);
    }

    #[test]
    fn overlapping_ranges_are_refused() {
        let mut bus = Bus::default();
        bus.insert(0x1000, 0x1000, Arc::new(Mutex::new(Recorder::default())))
            .unwrap();
        assert!(bus
            .insert(0x1800, 0x1000, Arc::new(Mutex::new(Recorder::default())))
            .is_err());
        assert!(bus
            .insert(u64::MAX, 2, Arc::new(Mutex::new(Recorder::default())))
            .is_err());
        assert!(bus
            .insert(0x2000, 0x1000, Arc::new(Mutex::new(Recorder::default())))
            .is_ok());
    }
}
