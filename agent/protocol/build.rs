//! Generates the agent API (messages and ttrpc service) from proto/agent.proto
//! with the pure-Rust ttrpc-codegen: no `protoc` on the build machine.

use std::path::{Path, PathBuf};

fn main() {
    let proto = "proto/agent.proto";
    println!("cargo:rerun-if-changed={proto}");
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));

    ttrpc_codegen::Codegen::new()
        .out_dir(&out_dir)
        .input(proto)
        .include("proto")
        .rust_protobuf()
        .customize(ttrpc_codegen::Customize {
            async_all: true,
            ..Default::default()
        })
        .rust_protobuf_customize(ttrpc_codegen::ProtobufCustomize::default().gen_mod_rs(false))
        .run()
        .expect("generating the agent API from proto/agent.proto");

    for generated in ["agent.rs", "agent_ttrpc.rs"] {
        strip_inner_attributes(&out_dir.join(generated));
    }
}

/// The generated files start with `#![...]` inner attributes and `//!` docs,
/// which `include!` rejects; the including module carries the allows instead.
fn strip_inner_attributes(path: &Path) {
    let text = std::fs::read_to_string(path).expect("reading generated code");
    let kept: Vec<&str> = text
        .lines()
        .filter(|line| !line.starts_with("#!") && !line.starts_with("//!"))
        .collect();
    std::fs::write(path, kept.join("\n")).expect("writing generated code");
}
