//! virtio-fs driven as the Linux driver would, through the virtio-mmio
//! transport and hand-built split rings, against a temp directory share.

mod config;
mod fuse_ops;
mod fuzz;
mod guest;
mod hostile;
mod mknod;
mod ops;
