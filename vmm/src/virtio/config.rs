//! Bounds-checked access to a device's config space.
//!
//! Offsets and lengths come straight from guest MMIO accesses, so devices share
//! this one careful copy instead of each slicing its own buffer.

/// Copies `config[offset..offset + data.len()]` into `data`; whatever lies outside
/// `config` reads as zero. Returns false if any part was out of range.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) -> bool {
    data.fill(0);
    let Some(src) = config_range(config.len(), offset, data.len()) else {
        return false;
    };
    let (start, end) = src;
    let n = end - start;
    data[..n].copy_from_slice(&config[start..end]);
    n == data.len()
}

/// Copies `data` into `config` at `offset` only if it fits entirely; returns
/// whether it did.
pub fn write_config_bytes(config: &mut [u8], offset: u64, data: &[u8]) -> bool {
    match config_range(config.len(), offset, data.len()) {
        Some((start, end)) if end - start == data.len() => {
            config[start..end].copy_from_slice(data);
            true
        }
        _ => false,
    }
}

// The in-bounds part of `[offset, offset + len)` within a config of `size` bytes.
fn config_range(size: usize, offset: u64, len: usize) -> Option<(usize, usize)> {
    let start = usize::try_from(offset).ok().filter(|&s| s < size)?;
    let end = start.saturating_add(len).min(size);
    Some((start, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_clip_to_zero() {
        let config = [1u8, 2, 3, 4];
        let mut data = [0xffu8; 4];
        assert!(read_config_bytes(&config, 0, &mut data));
        assert_eq!(data, [1, 2, 3, 4]);
        assert!(!read_config_bytes(&config, 2, &mut data));
        assert_eq!(data, [3, 4, 0, 0]);
        assert!(!read_config_bytes(&config, 4, &mut data));
        assert_eq!(data, [0; 4]);
        assert!(!read_config_bytes(&config, u64::MAX, &mut data));
        assert_eq!(data, [0; 4]);
    }

    #[test]
    fn writes_must_fit() {
        let mut config = [0u8; 4];
        assert!(write_config_bytes(&mut config, 2, &[7, 8]));
        assert_eq!(config, [0, 0, 7, 8]);
        assert!(!write_config_bytes(&mut config, 3, &[9, 9]));
        assert!(!write_config_bytes(&mut config, u64::MAX, &[9]));
        assert_eq!(config, [0, 0, 7, 8]);
    }
}
