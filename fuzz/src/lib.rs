//! What several fuzz targets share.

pub mod transport_ops;
