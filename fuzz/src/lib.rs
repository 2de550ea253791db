//! What several fuzz targets share.

pub mod chain_post;
pub mod confine;
pub mod queue_guest;
pub mod scratch_root;
pub mod transport_ops;
