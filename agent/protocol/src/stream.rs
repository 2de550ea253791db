//! The header that opens every stdio connection to the agent's stream port.
//!
//! Each standard stream of each process is its own vsock connection to
//! [`crate::AGENT_STDIO_PORT`], so output moves as a plain byte stream with
//! the transport's own back-pressure. The first line of a connection names the
//! stream:
//!
//! ```text
//! COCOON-STREAM 1 <container-id> <exec-id or -> <stdin|stdout|stderr|tty>\n
//! ```
//!
//! and the agent answers `OK\n`, or `ERR <reason>\n` and closes. After `OK`
//! the connection is the stream's bytes; EOF ends the stream (for stdin: the
//! process sees EOF).

use std::fmt;

/// First word of a stream header.
const MAGIC: &str = "COCOON-STREAM";
/// Header format version.
const VERSION: &str = "1";
/// Longest header line the agent reads, newline included.
pub const MAX_HEADER_LEN: usize = 256;
/// Longest container or exec id (containerd's limit is 76).
const MAX_ID_LEN: usize = 76;
/// What a header line says in place of the exec id for a container's init.
const INIT_PROCESS: &str = "-";

/// Which standard stream a connection carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StreamKind {
    Stdin,
    Stdout,
    Stderr,
    /// A terminal: input and output on one connection.
    Tty,
}

impl StreamKind {
    fn as_str(self) -> &'static str {
        match self {
            StreamKind::Stdin => "stdin",
            StreamKind::Stdout => "stdout",
            StreamKind::Stderr => "stderr",
            StreamKind::Tty => "tty",
        }
    }

    fn parse(word: &str) -> Option<Self> {
        Some(match word {
            "stdin" => StreamKind::Stdin,
            "stdout" => StreamKind::Stdout,
            "stderr" => StreamKind::Stderr,
            "tty" => StreamKind::Tty,
            _ => return None,
        })
    }
}

/// A parsed stream header.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StreamHeader {
    pub container_id: String,
    /// Empty for the container's init process.
    pub exec_id: String,
    pub kind: StreamKind,
}

/// Why a header line was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HeaderError {
    #[error("stream header is longer than {MAX_HEADER_LEN} bytes")]
    TooLong,
    #[error("stream header is not a line of UTF-8 text")]
    NotText,
    #[error("not a cocoon stream header (expected `{MAGIC} {VERSION} ...`)")]
    BadMagic,
    #[error("stream header version {0:?} is not supported (this agent speaks {VERSION})")]
    BadVersion(String),
    #[error("stream header needs 5 words: {MAGIC} {VERSION} CONTAINER EXEC KIND")]
    WrongWordCount,
    #[error("invalid {what} {id:?}: use 1-{MAX_ID_LEN} of A-Z a-z 0-9 . _ -")]
    BadId { what: &'static str, id: String },
    #[error("unknown stream {0:?} (expected stdin, stdout, stderr or tty)")]
    BadKind(String),
}

impl StreamHeader {
    /// The header line, newline included.
    pub fn encode(&self) -> String {
        let exec = if self.exec_id.is_empty() {
            INIT_PROCESS
        } else {
            &self.exec_id
        };
        format!(
            "{MAGIC} {VERSION} {} {exec} {}\n",
            self.container_id,
            self.kind.as_str()
        )
    }

    /// Parses one header line (with or without its newline).
    pub fn parse(line: &[u8]) -> Result<Self, HeaderError> {
        if line.len() > MAX_HEADER_LEN {
            return Err(HeaderError::TooLong);
        }
        let line = std::str::from_utf8(line).map_err(|_| HeaderError::NotText)?;
        let line = line.strip_suffix('\n').unwrap_or(line);
        if line.contains('\n') {
            return Err(HeaderError::NotText);
        }
        let words: Vec<&str> = line.split(' ').collect();
        if words.first() != Some(&MAGIC) {
            return Err(HeaderError::BadMagic);
        }
        if words.len() != 5 {
            return Err(HeaderError::WrongWordCount);
        }
        if words[1] != VERSION {
            return Err(HeaderError::BadVersion(words[1].to_owned()));
        }
        let container_id = validate_id("container id", words[2])?;
        let exec_id = match words[3] {
            INIT_PROCESS => String::new(),
            id => validate_id("exec id", id)?,
        };
        let kind =
            StreamKind::parse(words[4]).ok_or_else(|| HeaderError::BadKind(words[4].into()))?;
        Ok(StreamHeader {
            container_id,
            exec_id,
            kind,
        })
    }
}

impl fmt::Display for StreamHeader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let exec = if self.exec_id.is_empty() {
            "init"
        } else {
            &self.exec_id
        };
        write!(
            f,
            "{} of {}/{}",
            self.kind.as_str(),
            self.container_id,
            exec
        )
    }
}

/// Whether `id` is a valid container or exec id: containerd's identifier
/// alphabet, which also keeps ids safe as path components.
pub fn is_valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id != "."
        && id != ".."
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn validate_id(what: &'static str, id: &str) -> Result<String, HeaderError> {
    if is_valid_id(id) {
        Ok(id.to_owned())
    } else {
        Err(HeaderError::BadId {
            what,
            id: id.chars().take(MAX_ID_LEN + 1).collect(),
        })
    }
}

/// The agent's answer to an accepted header.
pub const ACCEPTED: &[u8] = b"OK\n";

/// The agent's answer to a refused header.
pub fn refusal(reason: &str) -> Vec<u8> {
    let reason: String = reason
        .chars()
        .map(|c| if c == '\n' { ' ' } else { c })
        .collect();
    format!("ERR {reason}\n").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(container: &str, exec: &str, kind: StreamKind) -> StreamHeader {
        StreamHeader {
            container_id: container.into(),
            exec_id: exec.into(),
            kind,
        }
    }

    #[test]
    fn encode_then_parse_is_identity() {
        for kind in [
            StreamKind::Stdin,
            StreamKind::Stdout,
            StreamKind::Stderr,
            StreamKind::Tty,
        ] {
            for exec in ["", "exec-1"] {
                let h = header("web.1_a-b", exec, kind);
                assert_eq!(StreamHeader::parse(h.encode().as_bytes()), Ok(h));
            }
        }
    }

    #[test]
    fn init_process_is_a_dash_on_the_wire() {
        let line = header("c", "", StreamKind::Stdout).encode();
        assert_eq!(line, "COCOON-STREAM 1 c - stdout\n");
    }

    #[test]
    fn newline_is_optional_when_parsing() {
        let h = StreamHeader::parse(b"COCOON-STREAM 1 c e stdin").unwrap();
        assert_eq!(h, header("c", "e", StreamKind::Stdin));
    }

    #[test]
    fn refuses_other_protocols_and_versions() {
        assert_eq!(
            StreamHeader::parse(b"CONNECT 1024\n"),
            Err(HeaderError::BadMagic)
        );
        assert_eq!(
            StreamHeader::parse(b"COCOON-STREAM 2 c - stdout\n"),
            Err(HeaderError::BadVersion("2".into()))
        );
    }

    #[test]
    fn refuses_wrong_shapes() {
        for line in [
            &b"COCOON-STREAM 1 c stdout\n"[..],
            b"COCOON-STREAM 1 c - stdout extra\n",
            b"COCOON-STREAM 1  c - stdout\n",
            b"COCOON-STREAM\n",
        ] {
            assert!(StreamHeader::parse(line).is_err(), "{line:?}");
        }
    }

    #[test]
    fn refuses_ids_that_could_escape_a_directory() {
        for id in ["..", ".", "a/b", "a\0b", "", &"x".repeat(77)] {
            let line = format!("COCOON-STREAM 1 {id} - stdout\n");
            assert!(StreamHeader::parse(line.as_bytes()).is_err(), "{id:?}");
        }
        let line = b"COCOON-STREAM 1 c ../x stdout\n";
        assert!(matches!(
            StreamHeader::parse(line),
            Err(HeaderError::BadId {
                what: "exec id",
                ..
            })
        ));
    }

    #[test]
    fn refuses_unknown_stream_kinds() {
        assert_eq!(
            StreamHeader::parse(b"COCOON-STREAM 1 c - stdio\n"),
            Err(HeaderError::BadKind("stdio".into()))
        );
    }

    #[test]
    fn refuses_overlong_and_binary_lines() {
        let long = vec![b'A'; MAX_HEADER_LEN + 1];
        assert_eq!(StreamHeader::parse(&long), Err(HeaderError::TooLong));
        assert_eq!(
            StreamHeader::parse(b"COCOON-STREAM 1 \xff - stdout\n"),
            Err(HeaderError::NotText)
        );
        assert_eq!(
            StreamHeader::parse(b"COCOON-STREAM 1 c - stdout\n\n"),
            Err(HeaderError::NotText)
        );
    }

    #[test]
    fn refusal_is_one_line() {
        assert_eq!(refusal("no such\nprocess"), b"ERR no such process\n");
    }
}
