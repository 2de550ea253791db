//! virtio-blk driven end to end through the transport and a real split
//! ring, on a temporary file.

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::IntoRawFd;

use virtio_bindings::virtio_config::VIRTIO_CONFIG_S_NEEDS_RESET;
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use vm_memory::{Bytes, GuestAddress};

use super::disk::DIRECT_ALIGN;
use super::request::{HEADER_LEN, S_IOERR, S_OK, S_UNSUPP, T_GET_ID, T_IN, T_OUT};
use super::*;
use crate::virtio::test_driver::{Driver, SplitRing, MEM_SIZE};

const WRITE: u16 = VRING_DESC_F_WRITE as u16;
const NEXT: u16 = VRING_DESC_F_NEXT as u16;
const HEADER: u64 = 0x10000;
const DATA: u64 = 0x20000;
const STATUS: u64 = 0x30000;
/// The test disk: 64 KiB.
const SECTORS: u64 = 128;

fn disk_file() -> std::fs::File {
    let mut file = tempfile::tempfile().expect("temporary file");
    file.set_len(SECTORS * 512).expect("disk size");
    // A pattern to read back: byte i of sector s is s + i.
    for sector in 0..SECTORS {
        let bytes: Vec<u8> = (0..512u64).map(|i| (sector + i) as u8).collect();
        file.write_all(&bytes).expect("pattern");
    }
    file
}

fn active_disk() -> (Driver, SplitRing, std::fs::File) {
    let file = disk_file();
    let disk = DiskFile::from_file(file.try_clone().expect("clone")).expect("a disk");
    let mut driver = Driver::new(Box::new(Block::new(disk)));
    assert_eq!(driver.device_features(), AVAIL_FEATURES);
    assert!(driver.negotiate(AVAIL_FEATURES));
    let ring = SplitRing::new(0x1000, 16);
    driver.setup_queue(0, &ring);
    assert!(driver.driver_ok());
    (driver, ring, file)
}

fn header(d: &Driver, request_type: u32, sector: u64) {
    let mut raw = [0u8; 16];
    raw[0..4].copy_from_slice(&request_type.to_le_bytes());
    raw[8..16].copy_from_slice(&sector.to_le_bytes());
    d.mem
        .write_slice(&raw, GuestAddress(HEADER))
        .expect("header");
    d.mem
        .write_obj(0xffu8, GuestAddress(STATUS))
        .expect("status");
}

/// Offers header, one data buffer of `len` (`data_flags`) and the status
/// byte as one chain at head 0; returns (used length, status).
fn submit(d: &mut Driver, ring: &mut SplitRing, data_flags: u16, len: u32) -> (u32, u8) {
    ring.set_desc(&d.mem, 0, HEADER, HEADER_LEN, NEXT, 1);
    ring.set_desc(&d.mem, 1, DATA, len, data_flags | NEXT, 2);
    ring.set_desc(&d.mem, 2, STATUS, 1, WRITE, 0);
    complete(d, ring)
}

fn complete(d: &mut Driver, ring: &mut SplitRing) -> (u32, u8) {
    let before = ring.used_idx(&d.mem);
    ring.push(&d.mem, 0);
    d.notify(0);
    assert!(
        ring.wait_used(&d.mem, before.wrapping_add(1)),
        "request never completed"
    );
    let (_, len) = ring.used_elem(&d.mem, before);
    let status: u8 = d.mem.read_obj(GuestAddress(STATUS)).expect("status");
    (len, status)
}

fn needs_reset(d: &mut Driver) -> bool {
    d.status() & VIRTIO_CONFIG_S_NEEDS_RESET != 0
}

fn file_bytes(file: &mut std::fs::File, offset: u64, len: usize) -> Vec<u8> {
    let mut bytes = vec![0; len];
    file.seek(SeekFrom::Start(offset)).expect("seek");
    file.read_exact(&mut bytes).expect("read");
    bytes
}

#[test]
fn the_config_space_has_the_capacity_and_seg_max() {
    let (mut d, _, _) = active_disk();
    let capacity = u64::from(d.read32(0x100)) | (u64::from(d.read32(0x104)) << 32);
    assert_eq!(capacity, SECTORS);
    assert_eq!(d.read32(0x100 + 12), SEG_MAX);
    // Past what we fill, and past the struct: zeros.
    assert_eq!(d.read32(0x100 + 20), 0);
    assert_eq!(d.read32(0x100 + 0x80), 0);
}

#[test]
fn reads_what_the_disk_holds() {
    let (mut d, mut ring, _) = active_disk();
    header(&d, T_IN, 3);
    assert_eq!(submit(&mut d, &mut ring, WRITE, 1024), (1025, S_OK));
    let mut data = vec![0u8; 1024];
    d.mem
        .read_slice(&mut data, GuestAddress(DATA))
        .expect("data");
    let expected: Vec<u8> = (0..1024u64)
        .map(|i| (3 + i / 512 + i % 512) as u8)
        .collect();
    assert_eq!(data, expected);
}

#[test]
fn writes_reach_the_file() {
    let (mut d, mut ring, mut file) = active_disk();
    d.mem
        .write_slice(&[0xab; 512], GuestAddress(DATA))
        .expect("data");
    header(&d, T_OUT, SECTORS - 1);
    assert_eq!(submit(&mut d, &mut ring, 0, 512), (1, S_OK));
    assert_eq!(
        file_bytes(&mut file, (SECTORS - 1) * 512, 512),
        vec![0xab; 512]
    );
}

/// Page-aligned requests go around the host's page cache where the file
/// system allows (`O_DIRECT`), others through it: both see each other's
/// writes, and so does a reader of the file.
#[test]
fn aligned_and_unaligned_requests_see_each_others_writes() {
    let (mut d, mut ring, mut file) = active_disk();
    let page = DIRECT_ALIGN as u32;
    let page_sectors = u64::from(page) / 512;
    // Aligned: one page at the disk's second page.
    d.mem
        .write_slice(&vec![0x5a; page as usize], GuestAddress(DATA))
        .expect("data");
    header(&d, T_OUT, page_sectors);
    assert_eq!(submit(&mut d, &mut ring, 0, page), (1, S_OK));
    // Unaligned: one sector in its middle, through the page cache.
    d.mem
        .write_slice(&[0xc3; 512], GuestAddress(DATA))
        .expect("data");
    header(&d, T_OUT, page_sectors + 1);
    assert_eq!(submit(&mut d, &mut ring, 0, 512), (1, S_OK));
    // The aligned read sees both.
    header(&d, T_IN, page_sectors);
    assert_eq!(submit(&mut d, &mut ring, WRITE, page), (page + 1, S_OK));
    let mut expected = vec![0x5a; page as usize];
    expected[512..1024].fill(0xc3);
    let mut data = vec![0; page as usize];
    d.mem
        .read_slice(&mut data, GuestAddress(DATA))
        .expect("data");
    assert!(data == expected, "the guest reads back what it wrote");
    assert!(
        file_bytes(&mut file, u64::from(page), page as usize) == expected,
        "the file holds what the guest wrote"
    );
}

#[test]
fn a_request_of_many_buffers_is_one_transfer() {
    let (mut d, mut ring, mut file) = active_disk();
    header(&d, T_OUT, 0);
    // Three buffers, one of them split across a page boundary.
    d.mem
        .write_slice(&[1; 512], GuestAddress(DATA))
        .expect("one");
    d.mem
        .write_slice(&[2; 1024], GuestAddress(DATA + 0x1000 - 100))
        .expect("two");
    d.mem
        .write_slice(&[3; 512], GuestAddress(DATA + 0x3000))
        .expect("three");
    ring.set_desc(&d.mem, 0, HEADER, HEADER_LEN, NEXT, 1);
    ring.set_desc(&d.mem, 1, DATA, 512, NEXT, 2);
    ring.set_desc(&d.mem, 2, DATA + 0x1000 - 100, 1024, NEXT, 3);
    ring.set_desc(&d.mem, 3, DATA + 0x3000, 512, NEXT, 4);
    ring.set_desc(&d.mem, 4, STATUS, 1, WRITE, 0);
    assert_eq!(complete(&mut d, &mut ring), (1, S_OK));
    let written = file_bytes(&mut file, 0, 2048);
    assert_eq!(&written[..512], &[1; 512][..]);
    assert_eq!(&written[512..1536], &[2; 1024][..]);
    assert_eq!(&written[1536..], &[3; 512][..]);
}

#[test]
fn nothing_beyond_the_disk_is_read_or_written() {
    let (mut d, mut ring, mut file) = active_disk();
    for (request_type, flags) in [(T_IN, WRITE), (T_OUT, 0)] {
        // The last sector and one more; a sector so large it wraps.
        for sector in [SECTORS - 1, SECTORS, u64::MAX - 1] {
            header(&d, request_type, sector);
            assert_eq!(
                submit(&mut d, &mut ring, flags, 1024),
                (1, S_IOERR),
                "type {request_type} at {sector}"
            );
        }
    }
    assert_eq!(file.metadata().expect("metadata").len(), SECTORS * 512);
    let last = file_bytes(&mut file, (SECTORS - 1) * 512, 512);
    assert_eq!(last[0], (SECTORS - 1) as u8);
    assert!(!needs_reset(&mut d));
}

#[test]
fn malformed_requests_fail_alone() {
    let (mut d, mut ring, mut file) = active_disk();
    let before = file_bytes(&mut file, 0, 512);
    // Data of the wrong direction for a read, then for a write.
    header(&d, T_IN, 0);
    assert_eq!(submit(&mut d, &mut ring, 0, 512), (1, S_IOERR));
    header(&d, T_OUT, 0);
    assert_eq!(submit(&mut d, &mut ring, WRITE, 512), (1, S_IOERR));
    // Not a whole sector.
    header(&d, T_OUT, 0);
    assert_eq!(submit(&mut d, &mut ring, 0, 100), (1, S_IOERR));
    // A buffer outside guest memory.
    header(&d, T_IN, 0);
    ring.set_desc(&d.mem, 0, HEADER, HEADER_LEN, NEXT, 1);
    ring.set_desc(&d.mem, 1, MEM_SIZE - 256, 512, WRITE | NEXT, 2);
    ring.set_desc(&d.mem, 2, STATUS, 1, WRITE, 0);
    assert_eq!(complete(&mut d, &mut ring), (1, S_IOERR));
    // A short header; a device-writable one.
    for (len, flags) in [(8, NEXT), (HEADER_LEN, WRITE | NEXT)] {
        header(&d, T_OUT, 0);
        ring.set_desc(&d.mem, 0, HEADER, len, flags, 1);
        ring.set_desc(&d.mem, 1, DATA, 512, NEXT, 2);
        ring.set_desc(&d.mem, 2, STATUS, 1, WRITE, 0);
        assert_eq!(complete(&mut d, &mut ring), (1, S_IOERR));
    }
    // An unknown type (FLUSH was not offered).
    header(&d, 4, 0);
    assert_eq!(submit(&mut d, &mut ring, 0, 512), (1, S_UNSUPP));
    // No status byte: completed empty, nothing done.
    header(&d, T_OUT, 0);
    ring.set_desc(&d.mem, 0, HEADER, HEADER_LEN, NEXT, 1);
    ring.set_desc(&d.mem, 1, DATA, 512, 0, 0);
    assert_eq!(complete(&mut d, &mut ring), (0, 0xff));
    // A descriptor loop.
    ring.set_desc(&d.mem, 0, HEADER, HEADER_LEN, NEXT, 1);
    ring.set_desc(&d.mem, 1, DATA, 512, NEXT, 0);
    let (len, _) = complete(&mut d, &mut ring);
    assert_eq!(len, 0);

    assert_eq!(file_bytes(&mut file, 0, 512), before);
    assert!(!needs_reset(&mut d));
    // Still serving.
    header(&d, T_IN, 1);
    assert_eq!(submit(&mut d, &mut ring, WRITE, 512), (513, S_OK));
}

#[test]
fn get_id_answers_the_serial() {
    let (mut d, mut ring, _) = active_disk();
    header(&d, T_GET_ID, 0);
    assert_eq!(submit(&mut d, &mut ring, WRITE, 64), (21, S_OK));
    let mut id = [0u8; 20];
    d.mem.read_slice(&mut id, GuestAddress(DATA)).expect("id");
    assert_eq!(&id[..SERIAL.len()], SERIAL);
    assert!(id[SERIAL.len()..].iter().all(|&b| b == 0));
}

#[test]
fn an_unusable_fd_is_refused_with_a_reason() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("disk");
    std::fs::write(&path, vec![0u8; 1024]).expect("disk file");
    let read_only = std::fs::File::open(&path).expect("open").into_raw_fd();
    assert!(matches!(
        DiskFile::from_inherited_fd(read_only),
        Err(DiskError::NotReadWrite(_))
    ));
    let directory = std::fs::File::open(dir.path())
        .expect("open dir")
        .into_raw_fd();
    assert!(matches!(
        DiskFile::from_inherited_fd(directory),
        Err(DiskError::NotReadWrite(_) | DiskError::NotAFile(_))
    ));
    std::fs::write(&path, vec![0u8; 1000]).expect("odd size");
    let odd = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .expect("open")
        .into_raw_fd();
    let error = DiskFile::from_inherited_fd(odd).expect_err("1000 bytes is not whole sectors");
    assert!(error.to_string().contains("1000 bytes"), "{error}");
    assert!(matches!(
        DiskFile::from_inherited_fd(1),
        Err(DiskError::Inherited(
            crate::inherited_fd::InheritedFdError::StandardStream { fd: 1, .. }
        ))
    ));
}
