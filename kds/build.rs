//! Generates the KDS gRPC service (`meridian.kds.v1.KdsSync`) with `tonic_build::manual`: no
//! protoc and no .proto file; the messages are Envoy's delta xDS types from `envoy-types`.

fn method(name: &str, route: &str, input: &str, output: &str) -> tonic_build::manual::Method {
    tonic_build::manual::Method::builder()
        .name(name)
        .route_name(route)
        .input_type(input)
        .output_type(output)
        .codec_path("tonic_prost::ProstCodec")
        .client_streaming()
        .server_streaming()
        .build()
}

fn main() {
    const REQUEST: &str = "envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest";
    const RESPONSE: &str = "envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryResponse";
    let service = tonic_build::manual::Service::builder()
        .name("KdsSync")
        .package("meridian.kds.v1")
        .comment(
            "KDS: policy flows down (GlobalToZoneSync), inventory flows up (ZoneToGlobalSync).",
        )
        .method(method(
            "global_to_zone_sync",
            "GlobalToZoneSync",
            REQUEST,
            RESPONSE,
        ))
        .method(method(
            "zone_to_global_sync",
            "ZoneToGlobalSync",
            RESPONSE,
            REQUEST,
        ))
        .build();
    tonic_build::manual::Builder::new().compile(&[service]);
    println!("cargo:rerun-if-changed=build.rs");
}
