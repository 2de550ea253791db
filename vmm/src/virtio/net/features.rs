//! What the device offers, what the tap is told from what the driver
//! accepted, and the config space.
//!
//! Offered (and why):
//! - VERSION_1; MAC (the address the VMM was given); STATUS (link always up).
//! - MRG_RXBUF: the driver posts small (page-sized) rx buffers and a large
//!   frame spans several; without it, a driver taking GSO frames must post
//!   64 KiB buffers.
//! - CSUM, HOST_TSO4/6 (guest → host): the tap takes partial checksums and
//!   TCP GSO frames whatever its offload settings.
//! - GUEST_CSUM, GUEST_TSO4/6 (host → guest): turned on at the tap
//!   (TUNSETOFFLOAD) only as far as the driver accepted them.
//! - Not offered: UFO/USO (UFO is gone from Linux guests, USO needs host
//!   6.2+), ECN (rare; the tap's TSO_ECN then stays off), MQ, CTRL_VQ, MTU
//!   (the guest gets its MTU from the agent).
//! - EVENT_IDX: fewer kicks and interrupts (tx completions are signalled in
//!   batches); rx re-arms the driver's kick (avail_event) whenever it runs
//!   out of buffers (rx.rs).

use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF,
    VIRTIO_NET_F_STATUS, VIRTIO_NET_S_LINK_UP,
};

use crate::virtio::config::read_config_bytes;
use crate::virtio::{VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX};

const fn bit(feature: u32) -> u64 {
    1 << feature
}

/// Every feature the device offers.
pub const AVAIL_FEATURES: u64 = VIRTIO_F_VERSION_1
    | VIRTIO_RING_F_EVENT_IDX
    | bit(VIRTIO_NET_F_MAC)
    | bit(VIRTIO_NET_F_STATUS)
    | bit(VIRTIO_NET_F_MRG_RXBUF)
    | bit(VIRTIO_NET_F_CSUM)
    | bit(VIRTIO_NET_F_HOST_TSO4)
    | bit(VIRTIO_NET_F_HOST_TSO6)
    | bit(VIRTIO_NET_F_GUEST_CSUM)
    | bit(VIRTIO_NET_F_GUEST_TSO4)
    | bit(VIRTIO_NET_F_GUEST_TSO6);

/// Whether the driver accepted mergeable rx buffers.
pub fn mergeable_rx(acked: u64) -> bool {
    acked & bit(VIRTIO_NET_F_MRG_RXBUF) != 0
}

/// The tap's offload flags (`TUN_F_*`) for what the driver accepted: the
/// kinds of frames it can take. TSO only with checksum offload, as both
/// virtio and the tap require.
pub fn tap_offloads(acked: u64) -> libc::c_uint {
    if acked & bit(VIRTIO_NET_F_GUEST_CSUM) == 0 {
        return 0;
    }
    let mut flags = libc::TUN_F_CSUM;
    if acked & bit(VIRTIO_NET_F_GUEST_TSO4) != 0 {
        flags |= libc::TUN_F_TSO4;
    }
    if acked & bit(VIRTIO_NET_F_GUEST_TSO6) != 0 {
        flags |= libc::TUN_F_TSO6;
    }
    flags
}

/// Reads `struct virtio_net_config`: mac[6], status, max_virtqueue_pairs
/// (1); the rest (mtu, speed, ...) reads as zero.
pub fn read_config(mac: [u8; 6], offset: u64, data: &mut [u8]) {
    let mut config = [0u8; 10];
    config[..6].copy_from_slice(&mac);
    config[6..8].copy_from_slice(&(VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
    config[8..10].copy_from_slice(&1u16.to_le_bytes());
    read_config_bytes(&config, offset, data);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offloads_follow_the_driver() {
        assert_eq!(tap_offloads(0), 0);
        assert_eq!(tap_offloads(bit(VIRTIO_NET_F_GUEST_TSO4)), 0);
        assert_eq!(
            tap_offloads(AVAIL_FEATURES),
            libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6
        );
        assert_eq!(
            tap_offloads(bit(VIRTIO_NET_F_GUEST_CSUM) | bit(VIRTIO_NET_F_GUEST_TSO6)),
            libc::TUN_F_CSUM | libc::TUN_F_TSO6
        );
    }

    #[test]
    fn config_space() {
        let mac = [0x02, 0, 0, 0xaa, 0xbb, 0xcc];
        let mut data = [0u8; 8];
        read_config(mac, 0, &mut data);
        assert_eq!(data, [0x02, 0, 0, 0xaa, 0xbb, 0xcc, 1, 0]);
        let mut far = [0xffu8; 4];
        read_config(mac, 10, &mut far);
        assert_eq!(far, [0; 4]);
    }
}
