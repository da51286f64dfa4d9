//! Test fixtures shared by the policy tests: YAML resources and Any decoding.

use mesh_api::Resource;
use prost::Message;

use envoy_types::pb::google::protobuf::Any;

/// The client proxy most tests configure: service `web`, HTTP, two tags.
pub const DATAPLANE: &str = r#"
type: Dataplane
name: web-1
mesh: default
labels:
  team: payments
networking:
  address: 10.0.0.1
  inbound:
    - port: 8080
      servicePort: 80
      tags:
        kuma.io/service: web
        kuma.io/protocol: http
        version: v2
"#;

/// Parses one YAML resource (universal form).
pub fn resource(yaml: &str) -> Resource {
    let mut parsed = mesh_api::parse_documents(yaml);
    assert_eq!(parsed.len(), 1, "one document expected");
    match parsed.remove(0) {
        Ok(p) => {
            p.resource.validate().expect("fixture is valid");
            p.resource
        }
        Err(e) => panic!("fixture does not parse: {e}"),
    }
}

/// Parses a YAML stream of valid resources.
pub fn policies(yaml: &str) -> Vec<Resource> {
    mesh_api::parse_documents(yaml)
        .into_iter()
        .map(|r| {
            let r = r.expect("fixture parses").resource;
            r.validate().expect("fixture is valid");
            r
        })
        .collect()
}

pub fn dataplane() -> Resource {
    resource(DATAPLANE)
}

/// Decodes an Any, checking its type URL.
pub fn unpack<T: Message + prost::Name + Default>(any: &Any) -> T {
    assert_eq!(any.type_url, T::type_url(), "type URL");
    T::decode(any.value.as_slice()).expect("decodes")
}
