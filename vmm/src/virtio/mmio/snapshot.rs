//! A transport's registers in a snapshot, and a transport set back to them.
//!
//! Queue positions are not saved: a snapshot is taken with every device's
//! workers stopped, and our devices complete descriptor chains in order
//! (or hand an unused chain back), so each queue's next available and next
//! used index both equal the used ring's index in the saved guest memory.
//! A chain a worker had taken but not completed when it stopped is taken
//! again by the restored device.

use std::sync::atomic::Ordering;

use serde::{Deserialize, Serialize};
use virtio_bindings::virtio_config::VIRTIO_CONFIG_S_DRIVER_OK;
use virtio_queue::QueueT;
use vm_memory::GuestAddress;

use super::{rings_in_memory, MmioTransport, DRIVER_STATUS_BITS};

/// One queue as the driver configured it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct QueueRegisters {
    size: u16,
    ready: bool,
    desc_table: u64,
    avail_ring: u64,
    used_ring: u64,
}

/// What the driver wrote into a transport, and the interrupt bits it has
/// not acknowledged yet.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TransportState {
    pub device_type: u32,
    status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    acked_features: u64,
    queue_sel: u32,
    interrupt_status: u32,
    queues: Vec<QueueRegisters>,
}

/// Why a transport could not take a saved state.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("the snapshot has a device of type {saved} where this VM has type {ours}")]
    DeviceType { saved: u32, ours: u32 },
    #[error("the snapshot's device of type {device} has {saved} queues, ours has {ours}")]
    QueueCount {
        device: u32,
        saved: usize,
        ours: usize,
    },
    #[error("device of type {device}: the saved {what} is invalid")]
    Invalid { device: u32, what: String },
    #[error("device of type {device} cannot start again: {source}")]
    Activate {
        device: u32,
        source: super::SetupError,
    },
}

impl MmioTransport {
    /// Stops the device's workers and returns the transport's registers.
    /// The device does nothing until the VM ends: call it only to save a
    /// paused VM.
    pub fn save_state(&mut self) -> TransportState {
        self.device.quiesce();
        TransportState {
            device_type: self.device.device_type(),
            status: self.status,
            device_features_sel: self.device_features_sel,
            driver_features_sel: self.driver_features_sel,
            acked_features: self.acked_features,
            queue_sel: self.queue_sel,
            interrupt_status: self.interrupt.status(),
            queues: self
                .queues
                .iter()
                .map(|slot| QueueRegisters {
                    size: slot.queue.size(),
                    ready: slot.queue.ready(),
                    desc_table: slot.queue.desc_table(),
                    avail_ring: slot.queue.avail_ring(),
                    used_ring: slot.queue.used_ring(),
                })
                .collect(),
        }
    }

    /// Sets a new transport (whose guest memory holds the saved RAM) to
    /// `state`, checking it as a driver's writes are checked, and starts the
    /// device if the driver had. The device's threads must be running.
    pub fn restore_state(&mut self, state: &TransportState) -> Result<(), RestoreError> {
        let device = self.device.device_type();
        let invalid = |what: &str| RestoreError::Invalid {
            device,
            what: what.to_string(),
        };
        if state.device_type != device {
            return Err(RestoreError::DeviceType {
                saved: state.device_type,
                ours: device,
            });
        }
        if state.queues.len() != self.queues.len() {
            return Err(RestoreError::QueueCount {
                device,
                saved: state.queues.len(),
                ours: self.queues.len(),
            });
        }
        if state.status & !DRIVER_STATUS_BITS != 0 {
            return Err(invalid("status"));
        }
        if state.acked_features & !self.device.avail_features() != 0 {
            return Err(invalid("feature set"));
        }
        for (slot, saved) in self.queues.iter_mut().zip(&state.queues) {
            let queue = &mut slot.queue;
            queue
                .try_set_size(saved.size)
                .and_then(|()| queue.try_set_desc_table_address(GuestAddress(saved.desc_table)))
                .and_then(|()| queue.try_set_avail_ring_address(GuestAddress(saved.avail_ring)))
                .and_then(|()| queue.try_set_used_ring_address(GuestAddress(saved.used_ring)))
                .map_err(|e| invalid(&format!("queue: {e}")))?;
            queue.set_ready(saved.ready);
            if saved.ready && !rings_in_memory(queue, &self.mem) {
                return Err(invalid("queue address"));
            }
        }
        self.device_features_sel = state.device_features_sel;
        self.driver_features_sel = state.driver_features_sel;
        self.acked_features = state.acked_features;
        self.queue_sel = state.queue_sel;
        self.device.set_acked_features(state.acked_features);
        // Before the device starts: its worker may raise an interrupt at once
        // (vsock, for a host connection already waiting on its socket), and
        // a status stored after that would wipe the bit, so the guest would
        // read 0, ignore the interrupt and leave the used buffer unseen.
        self.interrupt.restore_status(state.interrupt_status);
        if state.status & VIRTIO_CONFIG_S_DRIVER_OK != 0 {
            self.resume_queues()
                .map_err(|source| RestoreError::Activate { device, source })?;
        }
        self.status = state.status;
        Ok(())
    }

    // Starts the device on its queues, each resuming at the used ring's index.
    fn resume_queues(&mut self) -> Result<(), super::SetupError> {
        let (mut queues, events) = self.activation_queues()?;
        for (index, queue) in queues.iter_mut().enumerate() {
            if !queue.ready() {
                continue;
            }
            let used = queue
                .used_idx(&self.mem, Ordering::Acquire)
                .map_err(|e| super::SetupError::Queue(index, e))?;
            queue.set_next_avail(used.0);
            queue.set_next_used(used.0);
        }
        self.device.activate(
            self.mem.clone(),
            std::sync::Arc::clone(&self.interrupt),
            queues,
            events,
        )?;
        self.activated = true;
        Ok(())
    }
}
