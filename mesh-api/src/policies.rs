//! New-style targetRef policies (fields under `spec:`), plus MeshExternalService and MeshService.

pub mod common;
pub mod mesh_access_log;
pub mod mesh_circuit_breaker;
pub mod mesh_external_service;
pub mod mesh_fault_injection;
pub mod mesh_health_check;
pub mod mesh_http_route;
pub mod mesh_load_balancing_strategy;
pub mod mesh_metric;
pub mod mesh_rate_limit;
pub mod mesh_retry;
pub mod mesh_service;
pub mod mesh_tcp_route;
pub mod mesh_timeout;
pub mod mesh_trace;
pub mod mesh_traffic_permission;

#[cfg(test)]
mod fixture_tests {
    //! Runs the policy fixtures of `shared/fixtures/kuma` (when present) through parsing and
    //! validation: VALID ones must be clean, INVALID ones must report the expected fields.

    use std::path::Path;

    use crate::validation::{FieldPath, ValidationContext, Violations};
    use crate::{parse_documents, parse_spec, ResourceMeta, ResourceType, SpecForm};

    const DIR: &str = "/work/shared/fixtures/kuma";

    fn spec_violations(rtype: ResourceType, text: &str) -> Result<Vec<String>, String> {
        // Full documents carry `spec:` (or are Kubernetes-form); FLAT/SPEC ones are the spec.
        let full = text
            .lines()
            .any(|l| l.starts_with("spec:") || l.starts_with("kind:"));
        let mut out = Vec::new();
        if full {
            for doc in parse_documents(text) {
                let parsed = doc.map_err(|e| e.to_string())?;
                let r = parsed.resource;
                if r.resource_type().form() != SpecForm::Wrapped {
                    continue;
                }
                let mut v = Violations::new();
                r.spec.validate(
                    &ValidationContext { meta: &r.meta },
                    &FieldPath::new("spec"),
                    &mut v,
                );
                out.extend(v.iter().map(|x| format!("{}: {}", x.field, x.message)));
            }
        } else {
            let (spec, _) = parse_spec(rtype, text).map_err(|e| e.to_string())?;
            let meta = ResourceMeta::default();
            let mut v = Violations::new();
            spec.validate(
                &ValidationContext { meta: &meta },
                &FieldPath::new("spec"),
                &mut v,
            );
            out.extend(v.iter().map(|x| format!("{}: {}", x.field, x.message)));
        }
        Ok(out)
    }

    #[test]
    fn policy_fixtures() {
        let dir = Path::new(DIR);
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("Mesh") && !n.starts_with("Mesh__"))
            .collect();
        names.sort();
        let mut failures = Vec::new();
        for name in names {
            let kind = name.split("__").next().unwrap_or_default();
            let Some(rtype) = ResourceType::from_name(kind) else {
                continue;
            };
            let text = std::fs::read_to_string(dir.join(&name)).unwrap();
            let invalid = name.contains("__INVALID-");
            let result = spec_violations(rtype, &text);
            eprintln!("{name}: {result:?}");
            match (&result, invalid) {
                (Err(e), false) => failures.push(format!("{name}: parse error {e}")),
                (Ok(v), false) if !v.is_empty() => failures.push(format!("{name}: {v:?}")),
                (Ok(v), true) if v.is_empty() && !name.contains("label") => {
                    failures.push(format!("{name}: accepted"))
                }
                _ => {}
            }
        }
        assert!(failures.is_empty(), "{failures:#?}");
    }
}
