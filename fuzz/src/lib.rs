//! What several fuzz targets share.

pub mod confine;
pub mod transport_ops;
