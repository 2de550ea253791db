//! The virtio-fs device config space (virtio 1.2, 5.11.4) and the mount tag in it.
//!
//! ```text
//! struct virtio_fs_config {
//!     u8 tag[36];                 // UTF-8, NUL padded, not necessarily NUL terminated
//!     le32 num_request_queues;
//! };
//! ```
//!
//! `notify_buf_size` follows only with VIRTIO_FS_F_NOTIFICATION, which we do not offer.

/// Size of the tag field; a tag of exactly this many bytes has no terminating NUL.
pub const TAG_LEN: usize = 36;
/// Size of the config space we expose.
pub const CONFIG_SPACE_SIZE: usize = TAG_LEN + 4;

/// Why a mount tag was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TagError {
    /// Linux refuses an empty tag, so the share could never be mounted.
    #[error("the virtio-fs tag is empty")]
    Empty,
    /// The tag does not fit the config space.
    #[error("the virtio-fs tag is {0} bytes long; at most {TAG_LEN} fit")]
    TooLong(usize),
    /// A NUL would end the tag early in the guest; control characters make it
    /// unusable on a mount command line.
    #[error("the virtio-fs tag contains a NUL or control character")]
    BadChar,
}

/// Checks that `tag` can be handed to the guest and mounted by name.
pub fn validate_tag(tag: &str) -> Result<(), TagError> {
    if tag.is_empty() {
        return Err(TagError::Empty);
    }
    if tag.len() > TAG_LEN {
        return Err(TagError::TooLong(tag.len()));
    }
    if tag.chars().any(char::is_control) {
        return Err(TagError::BadChar);
    }
    Ok(())
}

/// The config space bytes, built once: the device never changes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigSpace {
    bytes: [u8; CONFIG_SPACE_SIZE],
}

impl ConfigSpace {
    /// Config space announcing `tag` and `num_request_queues` request queues.
    pub fn new(tag: &str, num_request_queues: u32) -> Result<Self, TagError> {
        validate_tag(tag)?;
        let mut bytes = [0u8; CONFIG_SPACE_SIZE];
        // validate_tag bounded the length, so both ranges are in bounds.
        bytes[..tag.len()].copy_from_slice(tag.as_bytes());
        bytes[TAG_LEN..].copy_from_slice(&num_request_queues.to_le_bytes());
        Ok(Self { bytes })
    }

    /// The raw config space as the guest reads it.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }
}
