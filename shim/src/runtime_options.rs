//! The runtime options containerd passes with a container's first task: for
//! a runtime other than runc they are containerd's `runtimeoptions.v1`
//! message, which names Cocoon's config file (or carries it inline).

use containerd_shim::protos::protobuf::well_known_types::any::Any;
use protobuf::Message;

mod generated {
    include!(concat!(env!("OUT_DIR"), "/protos/mod.rs"));
}

use generated::runtimeoptions::Options;

/// Where the config comes from when containerd says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigSource {
    Path(String),
    Inline(String),
}

#[derive(Debug, thiserror::Error)]
pub enum OptionsError {
    #[error("decoding the runtime options ({type_url}): {message}")]
    Decode { type_url: String, message: String },
    #[error("the runtime options' config_body is not UTF-8")]
    NotUtf8,
}

/// The config source in `options`, if any. Options of another type (a
/// runtime table copied from runc's, say) are not ours and are ignored.
pub fn config_source(options: Option<&Any>) -> Result<Option<ConfigSource>, OptionsError> {
    let Some(options) = options else {
        return Ok(None);
    };
    if !options.type_url.ends_with("runtimeoptions.v1.Options") {
        if !options.type_url.is_empty() {
            tracing::info!("ignoring runtime options of type {}", options.type_url);
        }
        return Ok(None);
    }
    let decoded = Options::parse_from_bytes(&options.value).map_err(|e| OptionsError::Decode {
        type_url: options.type_url.clone(),
        message: e.to_string(),
    })?;
    if !decoded.config_path.is_empty() {
        return Ok(Some(ConfigSource::Path(decoded.config_path)));
    }
    if !decoded.config_body.is_empty() {
        let body = String::from_utf8(decoded.config_body).map_err(|_| OptionsError::NotUtf8)?;
        return Ok(Some(ConfigSource::Inline(body)));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packed(type_url: &str, options: &Options) -> Any {
        Any {
            type_url: type_url.into(),
            value: options.write_to_bytes().unwrap(),
            ..Default::default()
        }
    }

    #[test]
    fn a_config_path_or_body_is_found_in_containerds_options() {
        let mut options = Options::new();
        options.config_path = "/etc/cocoon/other.toml".into();
        for type_url in [
            "runtimeoptions.v1.Options",
            "type.googleapis.com/runtimeoptions.v1.Options",
        ] {
            assert_eq!(
                config_source(Some(&packed(type_url, &options))).unwrap(),
                Some(ConfigSource::Path("/etc/cocoon/other.toml".into()))
            );
        }
        let mut options = Options::new();
        options.config_body = b"vcpus = 2\n".to_vec();
        assert_eq!(
            config_source(Some(&packed("runtimeoptions.v1.Options", &options))).unwrap(),
            Some(ConfigSource::Inline("vcpus = 2\n".into()))
        );
    }

    #[test]
    fn no_options_empty_options_and_foreign_options_name_no_config() {
        assert_eq!(config_source(None).unwrap(), None);
        let empty = packed("runtimeoptions.v1.Options", &Options::new());
        assert_eq!(config_source(Some(&empty)).unwrap(), None);
        let mut options = Options::new();
        options.config_path = "/x".into();
        let runc = packed("containerd.runc.v1.Options", &options);
        assert_eq!(config_source(Some(&runc)).unwrap(), None);
    }

    #[test]
    fn garbage_is_an_error() {
        let garbage = Any {
            type_url: "runtimeoptions.v1.Options".into(),
            value: vec![0xff, 0xff, 0xff],
            ..Default::default()
        };
        assert!(config_source(Some(&garbage)).is_err());
    }
}
