//! Why a virtio-fs device could not be built.

use std::io;
use std::path::PathBuf;

use super::config_space::TagError;

/// Errors of [`Fs::new`](super::Fs::new) and [`new_server`](super::new_server).
/// They surface while the VM is being built, before the guest runs.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// The mount tag cannot be put in the config space.
    #[error("invalid virtio-fs tag {tag:?}: {source}")]
    Tag {
        /// The tag as given.
        tag: String,
        /// What is wrong with it.
        #[source]
        source: TagError,
    },
    /// The shared directory does not exist or cannot be resolved.
    #[error("virtio-fs shared directory {}: {source}", .path.display())]
    Root {
        /// The path as given.
        path: PathBuf,
        /// The resolution error.
        #[source]
        source: io::Error,
    },
    /// The shared path exists but is not a directory.
    #[error("virtio-fs shared path {} is not a directory", .0.display())]
    NotADirectory(PathBuf),
    /// fuse-backend-rs takes its root as a `String`.
    #[error("virtio-fs shared directory {} is not valid UTF-8", .0.display())]
    NonUtf8Root(PathBuf),
    /// PassthroughFs could not be created or could not open the root.
    #[error("cannot serve {} over virtio-fs: {source}", .path.display())]
    Passthrough {
        /// The canonical shared directory.
        path: PathBuf,
        /// What fuse-backend-rs reported.
        #[source]
        source: io::Error,
    },
}
