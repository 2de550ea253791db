#!/usr/bin/env python3
"""Writes the seed inputs under fuzz/seeds/<target>/ (run from anywhere).

The seeds are committed; rerun this only to change them. Each is a small valid
input that gets the fuzzer past the first checks of its parser.
"""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def write(target, name, data):
    os.makedirs(os.path.join(HERE, target), exist_ok=True)
    with open(os.path.join(HERE, target, name), "wb") as f:
        f.write(data)


# vsock_header: struct virtio_vsock_hdr (44 bytes, little-endian).
def vsock(op, len_=0, flags=0, payload=b""):
    return struct.pack("<QQIIIHHIII", 3, 2, 1234, 1024, len_, 1, op, flags, 262144, 0) + payload

write("vsock_header", "request", vsock(1))
write("vsock_header", "rw", vsock(5, 4, payload=b"ping"))
write("vsock_header", "shutdown", vsock(4, flags=3))
write("vsock_header", "credit_update", vsock(6))

# vsock_connect_line: what a host client writes on the device socket.
write("vsock_connect_line", "connect", b"CONNECT 1024\n")
write("vsock_connect_line", "crlf", b"connect 4294967295\r\n")

# fs_request: concatenated FUSE requests (struct fuse_in_header + arguments).
# The share holds f ("content"), d/ and l -> f. Node ids are the Vfs's: the
# share is file system 1 (high byte) and numbers its inodes from 2 in lookup
# order; handles count from 1.
ROOT = 1


def node(n):
    return (1 << 56) | n

OP = dict(LOOKUP=1, FORGET=2, GETATTR=3, SETATTR=4, READLINK=5, SYMLINK=6, MKDIR=9,
          UNLINK=10, RMDIR=11, RENAME=12, LINK=13, OPEN=14, READ=15, WRITE=16,
          STATFS=17, RELEASE=18, FSYNC=20, SETXATTR=21, GETXATTR=22, LISTXATTR=23,
          REMOVEXATTR=24, FLUSH=25, INIT=26, OPENDIR=27, READDIR=28, RELEASEDIR=29,
          ACCESS=34, CREATE=35, DESTROY=38, READDIRPLUS=44, LSEEK=46)
unique = 0


def req(op, nodeid, args=b""):
    global unique
    unique += 1
    return struct.pack("<IIQQIIII", 40 + len(args), OP[op], unique, nodeid, 0, 0, 1, 0) + args


def name(s):
    return s.encode() + b"\0"


INIT = req("INIT", 0, struct.pack("<IIII", 7, 33, 131072, 0x7FFFFFFF & ~(1 << 30)))
read_in = lambda fh, off, size: struct.pack("<QQIIQII", fh, off, size, 0, 0, 0, 0)

write("fs_request", "init", INIT)
write("fs_request", "read", INIT
      + req("LOOKUP", ROOT, name("f"))
      + req("OPEN", node(2), struct.pack("<II", os.O_RDONLY, 0))
      + req("READ", node(2), read_in(1, 0, 4096))
      + req("LSEEK", node(2), struct.pack("<QQII", 1, 0, 2, 0))
      + req("FLUSH", node(2), struct.pack("<QIIQ", 1, 0, 0, 0))
      + req("RELEASE", node(2), struct.pack("<QIIQ", 1, 0, 0, 0))
      + req("FORGET", node(2), struct.pack("<Q", 1)))
write("fs_request", "write", INIT
      + req("CREATE", ROOT, struct.pack("<IIII", os.O_RDWR | os.O_CREAT, 0o100644, 0, 0) + name("g"))
      + req("WRITE", node(2), struct.pack("<QQIIQII", 1, 0, 5, 0, 0, 0, 0) + b"hello")
      + req("FSYNC", node(2), struct.pack("<QII", 1, 0, 0))
      + req("SETATTR", node(2), struct.pack("<IIQQQQQQIIIIIIII", 1 << 3, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0))
      + req("GETATTR", node(2), struct.pack("<IIQ", 0, 0, 0))
      + req("RELEASE", node(2), struct.pack("<QIIQ", 1, 0, 0, 0))
      + req("RENAME", ROOT, struct.pack("<Q", ROOT) + name("g") + name("h"))
      + req("UNLINK", ROOT, name("h")))
write("fs_request", "dir", INIT
      + req("OPENDIR", ROOT, struct.pack("<II", os.O_RDONLY, 0))
      + req("READDIRPLUS", ROOT, read_in(1, 0, 4096))
      + req("READDIR", ROOT, read_in(1, 0, 4096))
      + req("RELEASEDIR", ROOT, struct.pack("<QIIQ", 1, 0, 0, 0))
      + req("MKDIR", ROOT, struct.pack("<II", 0o755, 0) + name("e"))
      + req("LOOKUP", ROOT, name("d"))
      + req("RMDIR", ROOT, name("e"))
      + req("STATFS", ROOT))
write("fs_request", "links", INIT
      + req("LOOKUP", ROOT, name("l"))
      + req("READLINK", node(2))
      + req("SYMLINK", ROOT, name("m") + name("d"))
      + req("LOOKUP", ROOT, name("f"))
      + req("LINK", ROOT, struct.pack("<Q", node(4)) + name("g"))
      + req("ACCESS", node(4), struct.pack("<II", 4, 0)))
write("fs_request", "xattr", INIT
      + req("SETXATTR", ROOT, struct.pack("<II", 2, 0) + name("user.a") + b"xy")
      + req("GETXATTR", ROOT, struct.pack("<II", 64, 0) + name("user.a"))
      + req("LISTXATTR", ROOT, struct.pack("<II", 64, 0))
      + req("REMOVEXATTR", ROOT, name("user.a"))
      + req("DESTROY", 0))

# Reproducers of the known issues that fuzz_targets/fs_request.rs suppresses.
write("fs_request", "known-xattr-4g",
      req("GETXATTR", ROOT, struct.pack("<II", 0xFFFFFFFF, 0) + name("user.a"))
      + req("LISTXATTR", ROOT, struct.pack("<II", 0xFFFFFFFF, 0)))
O_PATH = 0o10000000
write("fs_request", "known-opath-read-closes-fd",
      req("LOOKUP", ROOT, name("f"))
      + req("OPEN", node(2), struct.pack("<II", O_PATH, 0))
      + req("READ", node(2), read_in(1, 0, 4096)))


# mmio_transport: 8-byte operations (see fuzz_targets/mmio_transport.rs).
def wr(offset, value):
    return struct.pack("<BBBBI", 0, offset // 4, 0, 0, value)


def rd(offset):
    return struct.pack("<BBBBI", 1, offset // 4, 0, 0, 0)


def mem(addr, value):
    return struct.pack("<BHBI", 3, addr, 0, value)


STATUS, NOTIFY, INT_STATUS, INT_ACK = 0x70, 0x50, 0x60, 0x64
QUEUE_SETUP = (
    rd(0x00) + rd(0x04) + rd(0x08)                  # magic, version, device id
    + wr(STATUS, 1) + wr(STATUS, 3)                 # ACKNOWLEDGE, DRIVER
    + wr(0x14, 1) + rd(0x10) + wr(0x14, 0) + rd(0x10)
    + wr(0x24, 1) + wr(0x20, 1)                     # VIRTIO_F_VERSION_1
    + wr(0x24, 0) + wr(0x20, 1 << 29)               # VIRTIO_RING_F_EVENT_IDX
    + wr(STATUS, 0xb) + rd(STATUS)                  # FEATURES_OK
    + wr(0x30, 0) + rd(0x34) + wr(0x38, 16)         # queue 0, 16 entries
    + wr(0x80, 0x1000) + wr(0x84, 0)                # descriptor table
    + wr(0x90, 0x2000) + wr(0x94, 0)                # avail ring
    + wr(0xa0, 0x3000) + wr(0xa4, 0)                # used ring
)
READY = wr(0x44, 1) + rd(0x44)
# One device-writable 64-byte buffer at 0x4000, made available.
RING = (mem(0x1000, 0x4000) + mem(0x1004, 0) + mem(0x1008, 64) + mem(0x100c, 2)
        + mem(0x2000, 1 << 16) + mem(0x2004, 0))
write("mmio_transport", "bring_up", QUEUE_SETUP + READY + RING + wr(STATUS, 0xf) + wr(NOTIFY, 0)
      + rd(INT_STATUS) + wr(INT_ACK, 1) + rd(STATUS) + rd(0x100) + rd(0xfc))
# A descriptor table running off the end of RAM: DRIVER_OK is refused; after
# a reset the device comes up properly.
write("mmio_transport", "bad_queue_then_reset", QUEUE_SETUP + wr(0x80, 0xff80) + READY
      + wr(STATUS, 0xf) + rd(STATUS) + wr(STATUS, 0) + QUEUE_SETUP + READY + RING
      + wr(STATUS, 0xf) + wr(NOTIFY, 0) + wr(STATUS, 0))

# balloon_transport: the same operations against virtio-balloon. All three
# queues (16 entries: descriptors at base, avail at +0x100, used at +0x200),
# free page reporting acked, one report of the page at 0x8000.
def queue(index, base):
    return (wr(0x30, index) + rd(0x34) + wr(0x38, 16)
            + wr(0x80, base) + wr(0x84, 0)
            + wr(0x90, base + 0x100) + wr(0x94, 0)
            + wr(0xa0, base + 0x200) + wr(0xa4, 0) + READY)


BALLOON_SETUP = (
    rd(0x00) + rd(0x08) + wr(STATUS, 1) + wr(STATUS, 3)
    + wr(0x24, 1) + wr(0x20, 1)                     # VIRTIO_F_VERSION_1
    + wr(0x24, 0) + wr(0x20, (1 << 29) | (1 << 5))  # EVENT_IDX, BALLOON_F_REPORTING
    + wr(STATUS, 0xb) + rd(STATUS)
    + queue(0, 0x1000) + queue(1, 0x2000) + queue(2, 0x3000)
)
REPORT = (mem(0x3000, 0x8000) + mem(0x3004, 0) + mem(0x3008, 0x1000) + mem(0x300c, 2)
          + mem(0x3100, 1 << 16) + mem(0x3104, 0))
write("balloon_transport", "report", BALLOON_SETUP + REPORT + wr(STATUS, 0xf) + wr(NOTIFY, 2)
      + rd(INT_STATUS) + wr(INT_ACK, 1) + rd(STATUS) + wr(0x104, 7) + rd(0x104) + rd(0x100))

# agent_stream_header: the line opening a stdio stream to the agent.
write("agent_stream_header", "init-stdout", b"COCOON-STREAM 1 c1 - stdout\n")
write("agent_stream_header", "exec-tty", b"COCOON-STREAM 1 web.1 exec-2 tty\n")

# agent_request: byte 0 picks the request type (see the target); 2 and 3 are
# raw OCI spec / process JSON, with host-only fields the agent rewrites.
write("agent_request", "spec-json", b"\x02" + (
    b'{"ociVersion":"1.1.0","root":{"path":"rootfs"},"process":{"args":["sh"],'
    b'"cwd":"/","user":{"uid":0,"gid":0},"env":["PATH=/bin"]},'
    b'"hooks":{"prestart":[{"path":"/x"}]},'
    b'"linux":{"namespaces":[{"type":"network","path":"/var/run/netns/x"}]}}'))
write("agent_request", "process-json",
      b'\x03{"args":["sh"],"cwd":"/","user":{"uid":65534,"gid":65534}}')


# bus: 8-byte operations [kind, base, off0, off1, width, v0, v1, v2] (see
# fuzz_targets/bus.rs). kind 0/1: port write/read at PIO_BASES[base] + off,
# 2/3: MMIO write/read at MMIO_BASES[base] + off, 4: host console input.
def bus(kind, base, off, width, v=(0, 0, 0)):
    return struct.pack("<BBhB3B", kind, base, off, width, *v)


COM1, I8042, I8042_CMD, MMIO = 0, 1, 2, 0
write("bus", "serial", bus(0, COM1, 3, 0, (0x80, 0, 0)) + bus(0, COM1, 0, 0, (1, 0, 0))
      + bus(0, COM1, 3, 0, (3, 0, 0)) + bus(0, COM1, 1, 0, (0xf, 0, 0))
      + b"".join(bus(0, COM1, 0, 0, (c, 0, 0)) for c in b"hello\r\n")
      + bus(1, COM1, 5, 0) + bus(1, COM1, 2, 0) + bus(4, 0, 0, 0, (80, 0, 0))
      + bus(1, COM1, 0, 0) + bus(0, COM1, 4, 0, (0x10, 0, 0))  # loopback
      + b"".join(bus(0, COM1, 0, 0, (c, 0, 0)) for c in range(70)) + bus(1, COM1, 0, 0))
write("bus", "reset", bus(1, I8042_CMD, 0, 0) + bus(0, I8042_CMD, 0, 0, (0xd1, 0, 0))
      + bus(0, I8042_CMD, 0, 1, (0xfe, 0xfe, 0)) + bus(0, I8042, 0, 0, (0xfe, 0, 0))
      + bus(0, I8042_CMD, 0, 0, (0xfe, 0, 0)))
write("bus", "straddle", bus(1, COM1, 6, 2) + bus(1, COM1, 7, 1) + bus(1, COM1, -1, 0)
      + bus(0, COM1, 6, 3, (1, 2, 3)) + bus(3, MMIO, 0xffc, 3) + bus(3, MMIO, 0xffe, 2)
      + bus(1, 5, 0, 2) + bus(3, 4, -4, 3))
write("bus", "virtio_mmio", bus(3, MMIO, 0, 2) + bus(3, MMIO, 8, 2) + bus(2, MMIO, 0x70, 2, (1, 0, 0))
      + bus(2, MMIO, 0x70, 2, (3, 0, 0)) + bus(3, MMIO, 0x10, 2) + bus(3, MMIO, 0x100, 0)
      + bus(2, MMIO, 0x50, 2, (0, 0, 0)) + bus(3, MMIO, 0x60, 1))

# fs_chains: [features] then chains [ctl, nsegs, len16] request nsegs*[kind, len16, next]
# (see fuzz_targets/fs_chains.rs). kind 0: next len request bytes, 1: reply
# buffer of len, 2: rest of the request, 3: reply buffer of 16*len, 4-7 hostile.
def chain(request, segs, ctl=0):
    return (struct.pack("<BBH", ctl, (len(segs) - 1) % 64, len(request)) + request
            + b"".join(struct.pack("<BHB", k, l, n) for k, l, n in segs))


unique = 100
LINUX = [(0, 40, 0), (2, 0, 0), (1, 16, 0), (1, 4096, 0)]
fs_init = chain(INIT, [(0, 40, 0), (2, 0, 0), (1, 16, 0), (1, 64, 0)])
write("fs_chains", "linux", b"\0" + fs_init
      + chain(req("LOOKUP", ROOT, name("f")), LINUX)
      + chain(req("OPEN", node(2), struct.pack("<II", os.O_RDONLY, 0)), LINUX)
      + chain(req("READ", node(2), read_in(1, 0, 4096)), LINUX)
      + chain(req("FORGET", node(2), struct.pack("<Q", 1)), [(2, 0, 0)], ctl=7))
# The request cut into single bytes and zero-length pieces, the reply split too.
lookup = req("LOOKUP", ROOT, name("d"))
write("fs_chains", "split", b"\x01" + fs_init
      + chain(lookup, [(0, 1, 0)] * 10 + [(0, 0, 0)] + [(0, 7, 0)] * 6 + [(1, 0, 0), (1, 3, 0), (1, 200, 0)]))
# Writable before readable, a loop, a straddling descriptor, a huge length.
write("fs_chains", "hostile", b"\0" + fs_init
      + chain(lookup, [(1, 64, 0), (2, 0, 0)])
      + chain(lookup, [(2, 0, 0), (1, 64, 0)], ctl=8)
      + chain(lookup, [(2, 0, 0), (0x15, 0x10, 0), (1, 64, 0)])
      + chain(lookup, [(2, 0, 0), (0x16, 0x10, 0)])
      + chain(lookup, [(2, 0, 0), (0x80 | 1, 64, 0)]))
# Ways out: writes through the share's symlinks to the canary next to it.
write("fs_chains", "escape", b"\0" + fs_init
      + chain(req("LOOKUP", ROOT, name("up")), LINUX)
      + chain(req("OPEN", node(2), struct.pack("<II", os.O_RDWR | os.O_TRUNC, 0)), LINUX)
      + chain(req("WRITE", node(2), struct.pack("<QQIIQII", 1, 0, 5, 0, 0, 0, 0) + b"owned"), LINUX)
      + chain(req("CREATE", ROOT, struct.pack("<IIII", os.O_RDWR | os.O_CREAT, 0o100644, 0, 0) + name("../x")), LINUX)
      + chain(req("SYMLINK", ROOT, name("s") + name("/tmp")), LINUX)
      + chain(req("LOOKUP", ROOT, name("abs")), LINUX)
      + chain(req("SETATTR", node(3), struct.pack("<IIQQQQQQIIIIIIII", 1 << 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)), LINUX))

# vsock_queues: a byte stream of actions (see fuzz_targets/vsock_queues.rs).
# Byte 0: standard rx buffers to post first. Opcodes (low 3 bits): 0/1 tx
# packet, 2 rx buffer of any shape, 3 more standard rx buffers, 4 answer a
# recent connection, 5 host action (op >> 3), 6 settle, 7 kick.
def tx(op, ports_sel, payload=b"", shape=0, cuts=(), mode=0, flags=0, pad_to=0):
    # pad_to: a payload length beyond the bytes given (the target pads it).
    out = struct.pack("<BBB", 0, mode, op) + bytes([ports_sel])
    out += struct.pack("<H", max(pad_to, len(payload))) + payload
    if pad_to > len(payload):
        return out  # the padding eats the rest of the input
    out += bytes([flags]) + bytes([shape])
    return out + b"".join(struct.pack("<H", c) for c in cuts)


def host(action, arg=0, extra=b""):
    return bytes([5 | (action << 3), arg]) + extra


SETTLE = b"\x06"
# Guest connects to host service 1024 (PORTS[0]), sends data, shuts down.
write("vsock_queues", "guest_connect", bytes([32])
      + tx(1, 0) + SETTLE + host(1)
      + tx(5, 0, b"hello host", shape=1, cuts=(44,)) + SETTLE
      + host(3, 0) + host(2, 0, struct.pack("<H", 100)) + SETTLE
      + tx(7, 0) + tx(4, 0, flags=3) + SETTLE + host(5, 0) + SETTLE)
# Host connects to guest port 1025, the guest answers with RESPONSE and data.
write("vsock_queues", "host_connect", bytes([32])
      + host(0, 1) + SETTLE + bytes([4, 0]) + SETTLE
      + bytes([4, 1]) + struct.pack("<H", 5) + b"guest" + SETTLE
      + host(3, 0) + host(2, 0, struct.pack("<H", 3000)) + SETTLE
      + bytes([4, 3]) + bytes([4, 5, 3]) + SETTLE + host(5, 0) + SETTLE)
# rx buffers of odd shapes, a packet with hostile descriptors, junk headers.
write("vsock_queues", "shapes", bytes([0])
      + bytes([2, 2, 0]) + struct.pack("<HHH", 10, 0, 4000)
      + bytes([2, 1, 1]) + struct.pack("<HH", 100, 100)
      + bytes([2, 1, 2]) + struct.pack("<HH", 100, 100)
      + tx(1, 2, shape=2 << 3) + tx(1, 2, shape=6 << 3) + tx(5, 3, b"x" * 300, shape=3, cuts=(1, 44, 200))
      + tx(9, 4, mode=3) + SETTLE + bytes([7 | (0 << 3)]) + SETTLE)
# More guest connections than the device allows (the target lowers the limit
# to 8): the ninth and later REQUESTs get an RST.
write("vsock_queues", "connection_limit", bytes([63]) + bytes([3, 31])
      + b"".join(tx(1, i << 3) for i in range(12)) + SETTLE + host(1) + SETTLE)
# A guest that ignores its credit: 10 x 64 KiB to a host service that never
# reads; past 256 KiB buffered the device resets the connection.
write("vsock_queues", "credit_overrun", bytes([32]) + tx(1, 0) + SETTLE
      + b"".join(struct.pack("<BBB", 0, 32, 5) + bytes([0]) + struct.pack("<H", 65535)
                 + bytes([0, 1]) + struct.pack("<H", 44) for _ in range(10)) + SETTLE)

# net_queues: byte 0 picks features (bit 0 MRG_RXBUF, 1 CSUM, 2 GUEST_CSUM,
# 3 HOST_TSO4, 4 HOST_TSO6, 5 EVENT_IDX), byte 1 how many 4 KiB rx buffers to stock, then
# one action per opcode byte (see the target for each action's bytes).
u8 = lambda v: struct.pack("<B", v)
u16 = lambda v: struct.pack("<H", v)


def net_header(mode, csum_start=0, csum_offset=0, hdr_len=0, gso_size=0):
    # mode: bits 0-1 not 0 (fields, not 12 raw bytes), bit 2 NEEDS_CSUM, bits
    # 3-5 index of the gso_type (0, TCPV4, TCPV6, UDP, UDP_L4, TCPV4|ECN),
    # bits 6-7 index of the csum_offset (6, 16, the next u16).
    return u8(mode) + u16(csum_start) + u16(csum_offset) + u16(hdr_len) + u16(gso_size)


def frame_len(n):
    return u8(1) + u16(n) if n != 1514 else u8(3)


def net_tx(n, header, shape=0, cuts=()):
    return u8(0) + frame_len(n) + header + bytes(range(min(n, 64))) + u8(shape) + b"".join(u16(c) for c in cuts)


def net_host(n, header, seed=1):
    return u8(4) + frame_len(n) + u8(1) + header + u8(seed)


PLAIN = net_header(1)
TSO4 = net_header(1 | 4 | (1 << 3) | (1 << 6), csum_start=34, hdr_len=66, gso_size=1448)
SETTLE = u8(6)
write("net_queues", "plain", u8(0x1f) + u8(8) + net_tx(1514, PLAIN) + net_host(1514, PLAIN) + SETTLE)
write("net_queues", "tso", u8(0x1f) + u8(32) + net_tx(30000, TSO4, shape=2, cuts=(5, 100))
      + net_host(30000, TSO4, seed=2) + SETTLE)
write("net_queues", "merged", u8(0x01) + u8(0) + u8(4) + u8(2) + u8(8) + u8(1) + PLAIN + u8(3)
      + u8(3) + u8(31) + u8(3) + u8(31) + SETTLE)
write("net_queues", "unmerged", u8(0x00) + u8(4) + net_host(1514, PLAIN) + net_host(30000, PLAIN) + SETTLE)
write("net_queues", "hostile", u8(0x1f) + u8(0)
      + u8(2) + u8(1) + u8(0x01) + u16(100) + u16(100)
      + u8(2) + u8(0) + u8(0x02) + u16(4096)
      + u8(2) + u8(2) + u8(0x00) + u16(0) + u16(6) + u16(4000)
      + net_tx(100, PLAIN, shape=(2 << 3)) + net_tx(100, PLAIN, shape=(3 << 3))
      + net_tx(100, PLAIN, shape=(5 << 3)) + net_tx(100, PLAIN, shape=(6 << 3) | 2, cuts=(1, 50))
      + net_host(1514, PLAIN) + net_host(100, PLAIN) + SETTLE)

# block_queues: byte 0 picks features (bit 0 EVENT_IDX), then chains
# `[type, sector (8 bytes), nsegs]` + descriptors `[kind, l0, l1, next]`
# (kind 0 header, 1 data of l0 sectors, 2 status; 0x10 device-writable).
def blk_chain(type_, sector, segs):
    return u8(type_) + struct.pack("<Q", sector) + u8(len(segs) - 1) + b"".join(
        u8(k) + u16(l) + u8(0) for k, l in segs)

HDR, STATUS_W = (0, 16), (0x12, 1)
write("block_queues", "write_read", u8(1)
      + blk_chain(1, 3, [HDR, (1, 2), STATUS_W])
      + blk_chain(0, 3, [HDR, (0x11, 2), STATUS_W])
      + blk_chain(2, 0, [HDR, (0x13, 20), STATUS_W]))
write("block_queues", "hostile", u8(0)
      + blk_chain(0x80, 1, [HDR, (0x11, 2), STATUS_W])
      + blk_chain(1, 0, [HDR, (0x11, 1), STATUS_W])
      + blk_chain(3, 0, [HDR, (1, 1), STATUS_W])
      + blk_chain(0, 0, [(0, 8), (0x11, 1), STATUS_W])
      + blk_chain(0, 0, [HDR, (0x14, 512), STATUS_W])
      + blk_chain(1, 0, [HDR, (1, 1), (2, 1)]))
