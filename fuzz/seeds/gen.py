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
