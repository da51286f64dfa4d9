//! `meshctl apply`: reads a multi-document YAML stream (universal or Kubernetes form), checks every
//! document locally first (nothing is sent when any of them is broken, as `kumactl apply` does),
//! then PUTs each resource's universal JSON to its REST path.

use std::io::Read as _;
use std::path::Path;

use anyhow::Context as _;
use mesh_api::ResourceType;
use serde_json::Value;

use crate::client::{ApiClient, PutOutcome};
use crate::types;

/// One document, ready to send.
#[derive(Debug, Clone, PartialEq)]
pub struct Planned {
    /// Its 0-based index in the stream.
    pub index: usize,
    pub rtype: ResourceType,
    /// The owning mesh (mesh-scoped types only).
    pub mesh: Option<String>,
    pub name: String,
    /// The universal form, as sent.
    pub body: Value,
    /// Unknown fields found while parsing, as `unknown field "spec.x"`.
    pub warnings: Vec<String>,
}

impl Planned {
    /// REST path segments of this resource.
    pub fn segments(&self) -> Vec<String> {
        types::resource_segments(self.rtype, self.mesh.as_deref(), &self.name)
    }

    /// `MeshTrafficPermission allow-all (mesh default)`.
    pub fn describe(&self) -> String {
        types::describe(self.rtype, self.mesh.as_deref(), &self.name)
    }
}

/// The documents that could not be read; each line is `resource[N]: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidDocuments {
    pub source: String,
    pub documents: usize,
    /// How many documents failed (one may have several errors).
    pub failed: usize,
    pub errors: Vec<String>,
}

impl std::fmt::Display for InvalidDocuments {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} of {} document(s) in {} cannot be applied; nothing was applied",
            self.failed, self.documents, self.source
        )?;
        for e in &self.errors {
            write!(f, "\n  {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for InvalidDocuments {}

/// Parses every document of `text`; all of them or an error listing each broken one.
/// `source` names the input in messages (a file name, or `stdin`).
pub fn plan(text: &str, source: &str) -> anyhow::Result<Vec<Planned>> {
    let results = mesh_api::parse_documents(text);
    if results.is_empty() {
        anyhow::bail!("{source} holds no resource documents");
    }
    let documents = results.len();
    let mut planned = Vec::new();
    let mut errors = Vec::new();
    let mut failed = 0;
    for (index, result) in results.into_iter().enumerate() {
        match result {
            Err(e) => {
                failed += 1;
                errors.push(e.to_string());
            }
            Ok(parsed) => {
                let problems = local_checks(&parsed.resource);
                if !problems.is_empty() {
                    failed += 1;
                    errors.extend(
                        problems
                            .into_iter()
                            .map(|p| format!("resource[{index}]: {p}")),
                    );
                    continue;
                }
                let resource = &parsed.resource;
                planned.push(Planned {
                    index,
                    rtype: resource.resource_type(),
                    mesh: resource.meta.mesh.clone(),
                    name: resource.meta.name.clone(),
                    body: mesh_api::to_universal(resource),
                    warnings: parsed.warnings,
                });
            }
        }
    }
    if errors.is_empty() {
        Ok(planned)
    } else {
        Err(InvalidDocuments {
            source: source.to_owned(),
            documents,
            failed,
            errors,
        }
        .into())
    }
}

/// Validates locally with the same rules the server applies, so `--dry-run` and a broken file
/// fail before anything is sent; each problem is `field.path: message`.
fn local_checks(resource: &mesh_api::Resource) -> Vec<String> {
    match mesh_api::validate_resource(resource) {
        Ok(()) => Vec::new(),
        Err(e) => e
            .violations
            .into_iter()
            .map(|v| format!("{}: {}", v.field, v.message))
            .collect(),
    }
}

/// Reads `-f FILE`, or standard input for `-`.
pub fn read_input(file: &Path) -> anyhow::Result<(String, String)> {
    if file.as_os_str() == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("cannot read resources from standard input")?;
        Ok((text, "stdin".to_owned()))
    } else {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read {}", file.display()))?;
        Ok((text, file.display().to_string()))
    }
}

/// The `--dry-run` output: every resource as universal YAML, separated by `---`.
pub fn dry_run_output(planned: &[Planned]) -> String {
    planned
        .iter()
        .map(|p| crate::output::to_yaml(&p.body))
        .collect::<Vec<_>>()
        .join("---\n")
}

fn print_warnings(p: &Planned, warnings: &[String]) {
    for w in warnings {
        eprintln!("warning: resource[{}] {}: {w}", p.index, p.describe());
    }
}

/// Checks locally and prints the resources without contacting the server.
pub fn dry_run(file: &Path) -> anyhow::Result<()> {
    let (text, source) = read_input(file)?;
    let planned = plan(&text, &source)?;
    for p in &planned {
        print_warnings(p, &p.warnings);
    }
    print!("{}", dry_run_output(&planned));
    Ok(())
}

/// Applies every resource in order, stopping at the first the server refuses.
pub async fn apply(client: &ApiClient, file: &Path) -> anyhow::Result<()> {
    let (text, source) = read_input(file)?;
    let planned = plan(&text, &source)?;
    put_all(client, &planned, |p, outcome| {
        let verb = if outcome.created {
            "created"
        } else {
            "updated"
        };
        println!("{verb} {} {}", p.rtype, p.name);
        // The server sees the normalized document, so unknown fields are reported from here; the
        // server's own warnings are added when they say something new.
        let mut warnings = p.warnings.clone();
        for w in &outcome.warnings {
            if !warnings.contains(w) {
                warnings.push(w.clone());
            }
        }
        print_warnings(p, &warnings);
    })
    .await
}

/// Applies `text` (YAML, one or more documents; `source` names it in errors), all or nothing
/// on invalid input, in order; for programs and tests driving a control plane.
pub async fn apply_text(client: &ApiClient, text: &str, source: &str) -> anyhow::Result<()> {
    let planned = plan(text, source)?;
    put_all(client, &planned, |_, _| {}).await
}

/// PUTs every planned resource in order, calling `done` after each; the error says which
/// resource failed and how many were applied before it.
async fn put_all(
    client: &ApiClient,
    planned: &[Planned],
    mut done: impl FnMut(&Planned, &PutOutcome),
) -> anyhow::Result<()> {
    let count = planned.len();
    for (applied, p) in planned.iter().enumerate() {
        let outcome = client.put(&p.segments(), &p.body).await.with_context(|| {
            let rest = if applied + 1 < count {
                format!(
                    " ({applied} of {count} applied before it, the {} after it were not)",
                    count - applied - 1
                )
            } else {
                String::new()
            };
            format!(
                "resource[{}] {} was not applied{rest}",
                p.index,
                p.describe()
            )
        })?;
        done(p, &outcome);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_both_forms_with_paths_and_universal_bodies() {
        let text = "\
type: Mesh
name: demo
---
apiVersion: kuma.io/v1alpha1
kind: MeshTrafficPermission
metadata:
  name: allow
  labels:
    kuma.io/mesh: demo
spec:
  targetRef:
    kind: Mesh
  from:
    - targetRef:
        kind: Mesh
      default:
        action: Allow
---
type: TrafficRoute
name: route-1
sources:
  - match:
      kuma.io/service: '*'
destinations:
  - match:
      kuma.io/service: '*'
conf:
  destination:
    kuma.io/service: backend
";
        let planned = plan(text, "x.yaml").unwrap();
        assert_eq!(planned.len(), 3);
        assert_eq!(planned[0].segments(), ["meshes", "demo"]);
        assert_eq!(
            planned[1].segments(),
            ["meshes", "demo", "meshtrafficpermissions", "allow"]
        );
        assert_eq!(planned[1].body["type"], "MeshTrafficPermission");
        assert_eq!(planned[1].body["mesh"], "demo");
        assert!(planned[1].body.get("apiVersion").is_none());
        // A mesh-scoped document without a mesh goes to the default mesh.
        assert_eq!(
            planned[2].segments(),
            ["meshes", "default", "traffic-routes", "route-1"]
        );
        assert_eq!(planned[2].index, 2);
    }

    #[test]
    fn any_broken_document_fails_the_whole_plan_naming_each() {
        let text = "\
type: Mesh
name: ok
---
type: NoSuchType
name: x
---
type: Mesh
---
: : not yaml [
";
        let err = plan(text, "bad.yaml").unwrap_err();
        let invalid = err
            .downcast_ref::<InvalidDocuments>()
            .expect("InvalidDocuments");
        assert_eq!(invalid.documents, 4);
        assert_eq!(invalid.errors.len(), 3, "{:?}", invalid.errors);
        assert!(
            invalid.errors[0].starts_with("resource[1]: "),
            "{:?}",
            invalid.errors
        );
        assert!(
            invalid.errors[0].contains("NoSuchType"),
            "{:?}",
            invalid.errors
        );
        assert_eq!(invalid.errors[1], "resource[2]: name: cannot be empty");
        assert!(
            invalid.errors[2].starts_with("resource[3]: "),
            "{:?}",
            invalid.errors
        );
        let text = err.to_string();
        assert!(text.contains("3 of 4 document(s) in bad.yaml"), "{text}");
        assert!(text.contains("nothing was applied"), "{text}");
    }

    #[test]
    fn empty_input_is_an_error() {
        let err = plan("# only a comment\n---\n", "empty.yaml").unwrap_err();
        assert!(
            err.to_string().contains("empty.yaml holds no resource"),
            "{err}"
        );
    }

    #[test]
    fn dry_run_prints_universal_yaml_documents() {
        let planned = plan(
            "apiVersion: kuma.io/v1alpha1\nkind: Mesh\nmetadata:\n  name: a\n---\ntype: Mesh\nname: b\n",
            "x",
        )
        .unwrap();
        let out = dry_run_output(&planned);
        assert_eq!(out, "type: Mesh\nname: a\n---\ntype: Mesh\nname: b\n");
        // The output is itself valid input.
        assert_eq!(plan(&out, "again").unwrap().len(), 2);
    }

    #[test]
    fn read_input_names_a_missing_file() {
        let err = read_input(Path::new("/nonexistent/policy.yaml")).unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent/policy.yaml"),
            "{err}"
        );
    }
}
