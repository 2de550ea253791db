//! `containerd-shim-cocoon-v1 -info`: containerd 2.x asks a shim what it is
//! (`containerd.types.RuntimeInfo`: name, version, the options in effect)
//! before each task it creates and for `ctr plugins inspect-runtime`; the
//! runtime options come on stdin (a protobuf `Any`, or nothing), the answer
//! goes to stdout. Without it containerd 2.x logged an error per container.
//! No OCI `features`: containerd then assumes no idmapped mounts, no
//! recursive read-only mounts and no CRI user namespaces, which is so.

use std::io::{Read, Write};

use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::types::introspection::{RuntimeInfo, RuntimeVersion};
use protobuf::Message;

use crate::runtime_options::{config_source, OptionsError};

/// The runtime name containerd knows the shim by.
pub const RUNTIME_NAME: &str = "io.containerd.cocoon.v1";

#[derive(Debug, thiserror::Error)]
pub enum InfoError {
    #[error("reading the runtime options from stdin: {0}")]
    Read(std::io::Error),
    #[error("decoding the runtime options from stdin: {0}")]
    Decode(protobuf::Error),
    #[error(transparent)]
    Options(#[from] OptionsError),
    #[error("encoding the runtime info: {0}")]
    Encode(protobuf::Error),
    #[error("writing the runtime info to stdout: {0}")]
    Write(std::io::Error),
}

/// Reads the options from `input`, writes the `RuntimeInfo` to `output`.
pub fn answer(mut input: impl Read, mut output: impl Write) -> Result<(), InfoError> {
    let mut bytes = Vec::new();
    input.read_to_end(&mut bytes).map_err(InfoError::Read)?;
    let options = if bytes.is_empty() {
        None
    } else {
        Some(Any::parse_from_bytes(&bytes).map_err(InfoError::Decode)?)
    };
    // Options that Create would refuse are refused here too.
    config_source(options.as_ref())?;
    let mut info = RuntimeInfo::new();
    info.name = RUNTIME_NAME.into();
    let mut version = RuntimeVersion::new();
    version.version = crate::VERSION.into();
    info.version = Some(version).into();
    info.options = options.into();
    let encoded = info.write_to_bytes().map_err(InfoError::Encode)?;
    output.write_all(&encoded).map_err(InfoError::Write)?;
    output.flush().map_err(InfoError::Write)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info_for(input: &[u8]) -> Result<RuntimeInfo, InfoError> {
        let mut out = Vec::new();
        answer(input, &mut out)?;
        Ok(RuntimeInfo::parse_from_bytes(&out).unwrap())
    }

    #[test]
    fn no_options_give_the_name_and_version() {
        let info = info_for(b"").unwrap();
        assert_eq!(info.name, RUNTIME_NAME);
        assert_eq!(info.version.version, crate::VERSION);
        assert!(info.options.is_none());
        assert!(info.features.is_none());
    }

    #[test]
    fn the_options_given_are_the_options_in_effect() {
        let options = Any {
            type_url: "runtimeoptions.v1.Options".into(),
            // config_path (field 2) = "/etc/cocoon/other.toml"
            value: [&[0x12, 22][..], b"/etc/cocoon/other.toml"].concat(),
            ..Default::default()
        };
        let info = info_for(&options.write_to_bytes().unwrap()).unwrap();
        assert_eq!(info.options.as_ref(), Some(&options));
    }

    #[test]
    fn garbage_options_are_an_error() {
        assert!(matches!(
            info_for(&[0xff, 0xff, 0xff]),
            Err(InfoError::Decode(_))
        ));
        let garbage = Any {
            type_url: "runtimeoptions.v1.Options".into(),
            value: vec![0xff, 0xff, 0xff],
            ..Default::default()
        };
        assert!(matches!(
            info_for(&garbage.write_to_bytes().unwrap()),
            Err(InfoError::Options(_))
        ));
    }
}
