//! What the host sends the agent in a call: the protobuf request decodes or
//! fails cleanly, and the OCI spec and process it carries go through the
//! agent's translation without a panic. Byte 0 picks the request type.
#![no_main]

use std::path::Path;

use cocoon_agent::spec::{pod_sandbox_id, translate_process, translate_spec, Placement};
use cocoon_protocol::api::agent::{
    CreateContainerRequest, ExecProcessRequest, MountRequest, ResizeTtyRequest,
    SetupNetworkRequest, SignalProcessRequest, UpdateResourcesRequest,
};
use libfuzzer_sys::fuzz_target;
use protobuf::Message;

fn placement(terminal: bool) -> Placement<'static> {
    Placement {
        container_id: "fuzz",
        rootfs: Path::new("/nonexistent/rootfs"),
        terminal,
        pod_sandbox_pid: Some(1),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&kind, bytes)) = data.split_first() else {
        return;
    };
    match kind % 8 {
        0 => {
            if let Ok(request) = CreateContainerRequest::parse_from_bytes(bytes) {
                let terminal = request.stdio.as_ref().is_some_and(|s| s.terminal);
                let _ = translate_spec(&request.oci_spec_json, &placement(terminal));
            }
        }
        1 => {
            if let Ok(request) = ExecProcessRequest::parse_from_bytes(bytes) {
                let _ = translate_process(&request.oci_process_json, &placement(false));
            }
        }
        // Raw JSON, so the fuzzer need not learn protobuf to reach serde.
        2 => {
            let _ = translate_spec(bytes, &placement(false));
            let _ = pod_sandbox_id(bytes, "fuzz");
        }
        3 => {
            let _ = translate_process(bytes, &placement(true));
        }
        4 => {
            let _ = MountRequest::parse_from_bytes(bytes);
        }
        5 => {
            let _ = SetupNetworkRequest::parse_from_bytes(bytes);
        }
        6 => {
            let _ = UpdateResourcesRequest::parse_from_bytes(bytes);
        }
        _ => {
            let _ = SignalProcessRequest::parse_from_bytes(bytes);
            let _ = ResizeTtyRequest::parse_from_bytes(bytes);
        }
    }
});
