//! What several fuzz targets share.

pub mod confine;
pub mod queue_guest;
pub mod transport_ops;
