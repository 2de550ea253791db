//! virtio-net driven through the transport and real split rings, with a
//! datagram socket pair standing in for the tap; and the tap checks (the
//! ones on a real tap need root and /dev/net/tun and are ignored otherwise).

use std::os::fd::{IntoRawFd, OwnedFd};
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use virtio_bindings::virtio_config::VIRTIO_CONFIG_S_NEEDS_RESET;
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_MRG_RXBUF,
    VIRTIO_NET_HDR_F_DATA_VALID, VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4,
};
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use vm_memory::{Bytes, GuestAddress};

use super::header::{NetHeader, HEADER_SIZE, MAX_PACKET_SIZE};
use super::*;
use crate::virtio::test_driver::{Driver, SplitRing};
use crate::virtio::{GuestMemory, VIRTIO_F_VERSION_1};

const WRITE: u16 = VRING_DESC_F_WRITE as u16;
const NEXT: u16 = VRING_DESC_F_NEXT as u16;
const MEM_SIZE: u64 = 4 << 20;
const RX_RING: u64 = 0x1000;
const TX_RING: u64 = 0x2000;
const RX_BUFS: u64 = 0x10_0000;
const TX_BUFS: u64 = 0x20_0000;
const RING_SIZE: u16 = 16;
const MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x12, 0x34, 0x56];

const fn bit(feature: u32) -> u64 {
    1 << feature
}

struct Guest {
    driver: Driver,
    rx: SplitRing,
    tx: SplitRing,
    // The host end of the "tap".
    host: UnixDatagram,
}

impl Guest {
    fn new(features: u64) -> Self {
        let (ours, host) = UnixDatagram::pair().expect("socket pair");
        host.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let tap = Tap::from_socket(OwnedFd::from(ours)).expect("stand-in tap");
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).expect("mem");
        let mut driver = Driver::with_memory(Box::new(Net::new(tap, MAC)), mem);
        assert_eq!(driver.device_features(), AVAIL_FEATURES);
        assert!(driver.negotiate(features & AVAIL_FEATURES));
        let rx = SplitRing::new(RX_RING, RING_SIZE);
        let tx = SplitRing::new(TX_RING, RING_SIZE);
        driver.setup_queue(0, &rx);
        driver.setup_queue(1, &tx);
        assert!(driver.driver_ok());
        Self {
            driver,
            rx,
            tx,
            host,
        }
    }

    fn mem(&self) -> &GuestMemory {
        &self.driver.mem
    }

    fn needs_reset(&mut self) -> bool {
        self.driver.status() & VIRTIO_CONFIG_S_NEEDS_RESET != 0
    }

    // Posts one rx buffer of `len` bytes (descriptor `head`) without a kick.
    fn post_rx(&mut self, head: u16, len: u32) {
        let addr = RX_BUFS + u64::from(head) * 0x1_0000;
        self.rx
            .set_desc(&self.driver.mem, head, addr, len, WRITE, 0);
        self.rx.push(&self.driver.mem, head);
    }

    fn rx_bytes(&self, head: u16, len: usize) -> Vec<u8> {
        let mut buf = vec![0; len];
        let addr = RX_BUFS + u64::from(head) * 0x1_0000;
        self.mem()
            .read_slice(&mut buf, GuestAddress(addr))
            .expect("rx buffer");
        buf
    }

    // Posts `packet` as a tx chain cut at `cuts`, from descriptor `head` on.
    fn send(&mut self, head: u16, packet: &[u8], cuts: &[usize]) {
        let addr = TX_BUFS + u64::from(head) * 0x2_0000;
        self.driver
            .mem
            .write_slice(packet, GuestAddress(addr))
            .expect("tx bytes");
        let mut bounds = vec![0];
        bounds.extend_from_slice(cuts);
        bounds.push(packet.len());
        let pieces = bounds.len() - 1;
        for i in 0..pieces {
            let index = head + i as u16;
            let flags = if i + 1 < pieces { NEXT } else { 0 };
            let len = (bounds[i + 1] - bounds[i]) as u32;
            let at = addr + bounds[i] as u64;
            self.tx
                .set_desc(&self.driver.mem, index, at, len, flags, index + 1);
        }
        self.tx.push(&self.driver.mem, head);
        self.driver.notify(1);
    }

    fn recv_host(&self) -> Vec<u8> {
        let mut buf = vec![0; MAX_PACKET_SIZE + 100];
        let n = self.host.recv(&mut buf).expect("a frame on the host side");
        buf.truncate(n);
        buf
    }

    // Whether the host side has a frame waiting (after the device settled).
    fn host_has_frame(&self) -> bool {
        self.host.set_nonblocking(true).expect("nonblocking");
        let mut buf = [0u8; 16];
        let got = self.host.recv(&mut buf).is_ok();
        self.host.set_nonblocking(false).expect("blocking");
        got
    }
}

fn frame(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn packet(header: NetHeader, frame: &[u8]) -> Vec<u8> {
    let mut packet = header.to_bytes().to_vec();
    packet.extend_from_slice(frame);
    packet
}

const OFFLOADS: u64 = VIRTIO_F_VERSION_1
    | bit(VIRTIO_NET_F_CSUM)
    | bit(VIRTIO_NET_F_HOST_TSO4)
    | bit(VIRTIO_NET_F_GUEST_CSUM)
    | bit(VIRTIO_NET_F_MRG_RXBUF);

#[test]
fn offers_its_features_mac_and_link_up() {
    let mut guest = Guest::new(VIRTIO_F_VERSION_1);
    let low = guest.driver.read32(0x100);
    let high = guest.driver.read32(0x104);
    assert_eq!(low.to_le_bytes(), [MAC[0], MAC[1], MAC[2], MAC[3]]);
    assert_eq!(high.to_le_bytes(), [MAC[4], MAC[5], 1, 0]);
    assert!(guest.driver.transport.is_activated());
}

#[test]
fn sends_a_frame_with_a_clean_header() {
    let mut guest = Guest::new(OFFLOADS);
    // Fields that do not apply without GSO or checksum: zeroed on the way.
    let header = NetHeader {
        gso_size: 77,
        hdr_len: 9,
        csum_start: 3,
        num_buffers: 5,
        ..Default::default()
    };
    let data = frame(60, 1);
    // The header itself cut in two.
    guest.send(0, &packet(header, &data), &[5, 30]);
    assert!(guest.tx.wait_used(guest.mem(), 1));
    assert_eq!(guest.tx.used_elem(guest.mem(), 0), (0, 0));
    assert_eq!(guest.recv_host(), packet(NetHeader::default(), &data));
    assert!(!guest.needs_reset());
}

#[test]
fn sends_tso_frames_when_negotiated() {
    let mut guest = Guest::new(OFFLOADS);
    let header = NetHeader {
        flags: VIRTIO_NET_HDR_F_NEEDS_CSUM as u8,
        gso_type: VIRTIO_NET_HDR_GSO_TCPV4 as u8,
        hdr_len: 66,
        gso_size: 1448,
        csum_start: 34,
        csum_offset: 16,
        num_buffers: 0,
    };
    let data = frame(40_000, 2);
    guest.send(0, &packet(header, &data), &[HEADER_SIZE]);
    assert!(guest.tx.wait_used(guest.mem(), 1));
    assert_eq!(guest.recv_host(), packet(header, &data));
}

#[test]
fn hostile_tx_chains_are_dropped_and_completed() {
    let mut guest = Guest::new(VIRTIO_F_VERSION_1 | bit(VIRTIO_NET_F_CSUM));
    let good = packet(NetHeader::default(), &frame(100, 3));
    // A GSO frame without HOST_TSO4.
    let tso = NetHeader {
        flags: VIRTIO_NET_HDR_F_NEEDS_CSUM as u8,
        gso_type: VIRTIO_NET_HDR_GSO_TCPV4 as u8,
        gso_size: 1000,
        ..Default::default()
    };
    guest.send(0, &packet(tso, &frame(3000, 0)), &[]);
    // DATA_VALID is the device's flag.
    let valid = NetHeader {
        flags: VIRTIO_NET_HDR_F_DATA_VALID as u8,
        ..Default::default()
    };
    guest.send(1, &packet(valid, &frame(100, 0)), &[]);
    // A checksum field past the frame's end.
    let csum = NetHeader {
        flags: VIRTIO_NET_HDR_F_NEEDS_CSUM as u8,
        csum_start: 90,
        csum_offset: 9,
        ..Default::default()
    };
    guest.send(2, &packet(csum, &frame(100, 0)), &[]);
    // Shorter than a header; an empty chain; shorter than an Ethernet header.
    guest.send(3, &[0u8; 7], &[]);
    guest.send(4, &[], &[]);
    guest.send(5, &packet(NetHeader::default(), &[1, 2, 3]), &[]);
    // A device-writable descriptor.
    let mem = guest.driver.mem.clone();
    guest.tx.set_desc(&mem, 6, TX_BUFS, 64, WRITE, 0);
    guest.tx.push(&mem, 6);
    // Outside guest memory, and a length that wraps the address space.
    guest.tx.set_desc(&mem, 7, MEM_SIZE - 8, 64, 0, 0);
    guest.tx.push(&mem, 7);
    guest.tx.set_desc(&mem, 8, u64::MAX - 8, 64, 0, 0);
    guest.tx.push(&mem, 8);
    // Longer than the largest packet: 4 GiB claimed, and just one byte over.
    guest.tx.set_desc(&mem, 9, TX_BUFS, u32::MAX, 0, 0);
    guest.tx.push(&mem, 9);
    guest
        .tx
        .set_desc(&mem, 10, TX_BUFS, MAX_PACKET_SIZE as u32 + 1, 0, 0);
    guest.tx.push(&mem, 10);
    // A descriptor loop.
    guest.tx.set_desc(&mem, 11, TX_BUFS, 16, NEXT, 12);
    guest.tx.set_desc(&mem, 12, TX_BUFS, 16, NEXT, 11);
    guest.tx.push(&mem, 11);
    // Then a good one, which must be the first the host sees.
    guest.send(13, &good, &[]);
    assert!(guest.tx.wait_used(guest.mem(), 13));
    for i in 0..13 {
        assert_eq!(guest.tx.used_elem(guest.mem(), i).1, 0);
    }
    assert_eq!(guest.recv_host(), good);
    assert!(!guest.host_has_frame());
    assert!(!guest.needs_reset());
}

#[test]
fn a_large_frame_spans_merged_buffers() {
    let mut guest = Guest::new(OFFLOADS);
    let data = frame(3000, 4);
    guest
        .host
        .send(&packet(NetHeader::default(), &data))
        .expect("send");
    guest.post_rx(0, 2048);
    guest.post_rx(1, 2048);
    guest.post_rx(2, 2048);
    guest.driver.notify(0);
    assert!(guest.rx.wait_used(guest.mem(), 2));
    let total = HEADER_SIZE + data.len();
    assert_eq!(guest.rx.used_elem(guest.mem(), 0), (0, 2048));
    assert_eq!(
        guest.rx.used_elem(guest.mem(), 1),
        (1, (total - 2048) as u32)
    );
    let mut got = guest.rx_bytes(0, 2048);
    got.extend(guest.rx_bytes(1, total - 2048));
    let header = NetHeader::parse(got[..HEADER_SIZE].try_into().expect("header"));
    assert_eq!(
        header,
        NetHeader {
            num_buffers: 2,
            ..Default::default()
        }
    );
    assert_eq!(&got[HEADER_SIZE..], &data[..]);
    // The third buffer is still the guest's, for the next frame.
    let small = frame(64, 5);
    guest
        .host
        .send(&packet(NetHeader::default(), &small))
        .expect("send");
    assert!(guest.rx.wait_used(guest.mem(), 3));
    assert_eq!(
        guest.rx.used_elem(guest.mem(), 2),
        (2, (HEADER_SIZE + 64) as u32)
    );
}

#[test]
fn frames_wait_in_the_tap_until_the_guest_posts_buffers() {
    let mut guest = Guest::new(OFFLOADS);
    let frames: Vec<Vec<u8>> = (0..3).map(|i| frame(100 + i, i as u8)).collect();
    for data in &frames {
        guest
            .host
            .send(&packet(NetHeader::default(), data))
            .expect("send");
    }
    // Nothing to put them in: nothing happens (and nothing is lost).
    guest.driver.notify(0);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(guest.rx.used_idx(guest.mem()), 0);
    for head in 0..3 {
        guest.post_rx(head, 4096);
    }
    guest.driver.notify(0);
    assert!(guest.rx.wait_used(guest.mem(), 3));
    for (i, data) in frames.iter().enumerate() {
        let (id, len) = guest.rx.used_elem(guest.mem(), i as u16);
        assert_eq!((id, len as usize), (i as u32, HEADER_SIZE + data.len()));
        let got = guest.rx_bytes(i as u16, len as usize);
        assert_eq!(&got[HEADER_SIZE..], &data[..], "frame {i}");
        assert_eq!(u16::from_le_bytes([got[10], got[11]]), 1);
    }
}

#[test]
fn without_merging_a_frame_must_fit_one_buffer() {
    let mut guest = Guest::new(VIRTIO_F_VERSION_1);
    guest
        .host
        .send(&packet(NetHeader::default(), &frame(2000, 6)))
        .expect("send");
    let small = frame(100, 7);
    guest
        .host
        .send(&packet(NetHeader::default(), &small))
        .expect("send");
    guest.post_rx(0, 1024);
    guest.driver.notify(0);
    assert!(guest.rx.wait_used(guest.mem(), 1));
    assert_eq!(
        guest.rx.used_elem(guest.mem(), 0),
        (0, (HEADER_SIZE + 100) as u32)
    );
    let got = guest.rx_bytes(0, HEADER_SIZE + 100);
    assert_eq!(&got[HEADER_SIZE..], &small[..]);
    assert_eq!(u16::from_le_bytes([got[10], got[11]]), 1);
}

#[test]
fn rx_frames_must_suit_the_negotiated_features() {
    // No GUEST_CSUM: a partial checksum cannot go in, DATA_VALID is cleared.
    let mut guest = Guest::new(VIRTIO_F_VERSION_1 | bit(VIRTIO_NET_F_MRG_RXBUF));
    let partial = NetHeader {
        flags: VIRTIO_NET_HDR_F_NEEDS_CSUM as u8,
        csum_start: 34,
        csum_offset: 16,
        ..Default::default()
    };
    guest
        .host
        .send(&packet(partial, &frame(100, 0)))
        .expect("send");
    let valid = NetHeader {
        flags: VIRTIO_NET_HDR_F_DATA_VALID as u8,
        ..Default::default()
    };
    let data = frame(80, 8);
    guest.host.send(&packet(valid, &data)).expect("send");
    // Runts and giants from the host side are dropped too.
    guest.host.send(&[0u8; HEADER_SIZE]).expect("send");
    guest.post_rx(0, 4096);
    guest.post_rx(1, 4096);
    guest.driver.notify(0);
    assert!(guest.rx.wait_used(guest.mem(), 1));
    let got = guest.rx_bytes(0, HEADER_SIZE + 80);
    let header = NetHeader::parse(got[..HEADER_SIZE].try_into().expect("header"));
    assert_eq!(
        header,
        NetHeader {
            num_buffers: 1,
            ..Default::default()
        }
    );
    assert_eq!(&got[HEADER_SIZE..], &data[..]);
    assert!(!guest.needs_reset());
}

#[test]
fn unusable_rx_buffers_come_back_empty() {
    let mut guest = Guest::new(OFFLOADS);
    let mem = guest.driver.mem.clone();
    // Device-readable; outside memory; too small for a header.
    guest.rx.set_desc(&mem, 0, RX_BUFS, 4096, 0, 0);
    guest.rx.push(&mem, 0);
    guest.rx.set_desc(&mem, 1, MEM_SIZE - 16, 4096, WRITE, 0);
    guest.rx.push(&mem, 1);
    guest.rx.set_desc(&mem, 2, RX_BUFS, 4, WRITE, 0);
    guest.rx.push(&mem, 2);
    guest.post_rx(3, 4096);
    let data = frame(200, 9);
    guest
        .host
        .send(&packet(NetHeader::default(), &data))
        .expect("send");
    guest.driver.notify(0);
    assert!(guest.rx.wait_used(guest.mem(), 4));
    for i in 0..3 {
        assert_eq!(guest.rx.used_elem(guest.mem(), i), (u32::from(i), 0));
    }
    assert_eq!(
        guest.rx.used_elem(guest.mem(), 3),
        (3, (HEADER_SIZE + 200) as u32)
    );
    assert!(!guest.needs_reset());
}

#[test]
fn what_is_not_a_tap_is_refused_naming_the_flag() {
    let check = |fd, expected: &str| {
        let error = Tap::from_inherited_fd(fd)
            .expect_err("not a tap")
            .to_string();
        assert!(
            error.contains("--net-fd") && error.contains(expected),
            "{error}"
        );
    };
    check(1, "standard streams");
    // An fd number nothing has open.
    check(1_000_000, "not an open file descriptor");
    let (read, _write) = std::io::pipe().expect("pipe");
    check(OwnedFd::from(read).into_raw_fd(), "not a character device");
    let null = std::fs::File::open("/dev/null").expect("/dev/null");
    check(null.into_raw_fd(), "not an attached tun/tap");
}

// Opens a tap named from `name` with `flags` (needs root and /dev/net/tun).
fn open_tap(name: &str, flags: libc::c_int) -> OwnedFd {
    // The host VM's Debian kernel has tun as a module, loaded on demand.
    if !std::path::Path::new("/dev/net/tun").exists() {
        let status = std::process::Command::new("modprobe").arg("tun").status();
        assert!(
            matches!(status, Ok(s) if s.success()),
            "/dev/net/tun is missing and `modprobe tun` failed: {status:?}"
        );
    }
    let tun = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .expect("/dev/net/tun");
    let mut ifr = [0u8; 40];
    ifr[..name.len()].copy_from_slice(name.as_bytes());
    ifr[16..18].copy_from_slice(&(flags as libc::c_short).to_ne_bytes());
    // SAFETY: TUNSETIFF reads and writes one struct ifreq (40 bytes).
    let rc = unsafe {
        libc::ioctl(
            std::os::fd::AsRawFd::as_raw_fd(&tun),
            libc::TUNSETIFF,
            ifr.as_mut_ptr(),
        )
    };
    assert_eq!(rc, 0, "TUNSETIFF: {}", std::io::Error::last_os_error());
    tun.into()
}

#[test]
#[ignore = "needs root and /dev/net/tun (runs in make kvm-test, as root in the host VM)"]
fn a_real_tap_is_checked_and_set_up() {
    let flags = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;
    let tap =
        Tap::from_inherited_fd(open_tap("cocoonut%d", flags).into_raw_fd()).expect("a good tap");
    assert!(tap.name().starts_with("cocoonut"), "{}", tap.name());
    let mut size: libc::c_int = 0;
    // SAFETY: TUNGETVNETHDRSZ writes one int.
    let rc = unsafe {
        libc::ioctl(
            std::os::fd::AsRawFd::as_raw_fd(&tap),
            libc::TUNGETVNETHDRSZ,
            &mut size,
        )
    };
    assert_eq!((rc, size), (0, HEADER_SIZE as libc::c_int));
    tap.set_offload(libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6)
        .expect("offloads");
    // (IFF_TAP without IFF_NO_PI is not among them: recent kernels report,
    // and apply, IFF_NO_PI on every tap.)
    for wrong in [
        libc::IFF_TAP | libc::IFF_NO_PI,
        libc::IFF_TUN | libc::IFF_NO_PI | libc::IFF_VNET_HDR,
    ] {
        let error = Tap::from_inherited_fd(open_tap("cocoonbad%d", wrong).into_raw_fd())
            .expect_err("wrong flags")
            .to_string();
        assert!(
            error.contains("IFF_TAP | IFF_NO_PI | IFF_VNET_HDR"),
            "{error}"
        );
    }
}

#[test]
fn with_event_idx_rx_asks_for_a_kick_when_it_runs_dry() {
    let mut guest = Guest::new(OFFLOADS | crate::virtio::VIRTIO_RING_F_EVENT_IDX);
    let avail_event_at = GuestAddress(guest.rx.used + 4 + 8 * u64::from(RING_SIZE));
    let avail_event = |guest: &Guest| -> u16 {
        u16::from_le(guest.mem().read_obj(avail_event_at).expect("avail_event"))
    };
    for (round, head) in (1..=3u16).zip(0..) {
        let data = frame(64 + usize::from(head), head as u8);
        guest
            .host
            .send(&packet(NetHeader::default(), &data))
            .expect("send");
        guest.post_rx(head, 4096);
        guest.driver.notify(0);
        assert!(guest.rx.wait_used(guest.mem(), round), "frame {round}");
        // Out of buffers again: the next one posted (index `round`) must kick.
        let deadline = std::time::Instant::now() + crate::virtio::test_driver::TIMEOUT;
        while avail_event(&guest) != round && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(avail_event(&guest), round);
    }
    assert!(!guest.needs_reset());
}
