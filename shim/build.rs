//! Generates the message of containerd's runtime options
//! (proto/runtimeoptions.proto) with the pure-Rust protobuf-codegen: no
//! `protoc` on the build machine.

fn main() {
    protobuf_codegen::Codegen::new()
        .pure()
        .include("proto")
        .input("proto/runtimeoptions.proto")
        .cargo_out_dir("protos")
        .run_from_script();
}
