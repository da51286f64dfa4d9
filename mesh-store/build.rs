//! With the `raft` feature, generates the Raft peer service (`meridian.raft.v1.RaftPeer`) with
//! `tonic_build::manual`: no protoc and no .proto file; the messages are hand-written prost types
//! in `src/raft/proto.rs`.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    #[cfg(feature = "raft")]
    raft_service();
}

#[cfg(feature = "raft")]
fn raft_service() {
    use tonic_build::manual::{Builder, Method, Service};
    let method = |name: &str, route: &str, input: &str, output: &str| {
        Method::builder()
            .name(name)
            .route_name(route)
            .input_type(input)
            .output_type(output)
            .codec_path("tonic_prost::ProstCodec")
    };
    const PAYLOAD: &str = "crate::raft::proto::RaftPayload";
    const CHUNK: &str = "crate::raft::proto::SnapshotChunk";
    let service = Service::builder()
        .name("RaftPeer")
        .package("meridian.raft.v1")
        .comment("Raft between global control plane nodes: openraft's RPCs, JSON inside protobuf.")
        .method(method("append_entries", "AppendEntries", PAYLOAD, PAYLOAD).build())
        .method(method("vote", "Vote", PAYLOAD, PAYLOAD).build())
        .method(method("forward", "Forward", PAYLOAD, PAYLOAD).build())
        .method(
            method("install_snapshot", "InstallSnapshot", CHUNK, PAYLOAD)
                .client_streaming()
                .build(),
        )
        .build();
    Builder::new().compile(&[service]);
}
