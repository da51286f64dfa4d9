//! Conformance against real Kuma YAML: every file in `../shared/fixtures/kuma` (relative to the
//! repository root) is parsed and validated, and the outcome is compared with what Kuma does as
//! recorded in the fixture index (`INDEX.md`): VALID files must parse and validate cleanly;
//! INVALID files must fail with exactly the expected set of violation field paths (messages may
//! differ). Legacy/core types and new-style policies are checked by separate tests so that one
//! group's progress does not hide the other's.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use mesh_api::{
    parse_documents, parse_spec, validate_resource, Resource, ResourceType, Scope, SpecForm,
};

/// How a fixture file is written (the INDEX's Form column).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Form {
    /// A complete universal document.
    Full,
    /// Kubernetes form.
    K8s,
    /// A multi-document stream.
    Multi,
    /// Only the spec body.
    Spec,
    /// Spec fields at top level next to `type`/`mesh`/`name`, which Kuma ignores.
    Flat,
}

impl Form {
    fn parse(s: &str) -> Option<Form> {
        match s {
            "FULL" => Some(Form::Full),
            "K8S" => Some(Form::K8s),
            "MULTI" => Some(Form::Multi),
            "SPEC" => Some(Form::Spec),
            "FLAT" => Some(Form::Flat),
            _ => None,
        }
    }
}

/// One row of the Files table.
#[derive(Debug, Clone)]
struct Entry {
    file: String,
    valid: bool,
    form: Form,
    notes: String,
}

/// What an INVALID fixture must produce.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Expected {
    /// One document whose violations name exactly these field paths.
    Violations(BTreeSet<String>),
    /// A stream in which exactly these documents fail to parse (index, kumactl's message).
    FailingDocuments(BTreeMap<usize, String>),
}

struct Index {
    entries: Vec<Entry>,
    expected: BTreeMap<String, Expected>,
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the crate lives inside the repository")
        .to_path_buf()
}

fn fixtures_dir() -> PathBuf {
    let dir = repo_root().join("../shared/fixtures/kuma");
    assert!(
        dir.join("INDEX.md").is_file(),
        "Kuma conformance fixtures not found: expected {} (the repository root's ../shared/fixtures/kuma)",
        dir.join("INDEX.md").display()
    );
    dir
}

fn load_index() -> Index {
    let path = fixtures_dir().join("INDEX.md");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    parse_index(&text)
}

/// The text between two `## ` headings, starting at the one named `title`.
fn section<'a>(text: &'a str, title: &str) -> &'a str {
    let start = text
        .find(&format!("\n## {title}"))
        .unwrap_or_else(|| panic!("INDEX.md has no '## {title}' section"));
    let rest = &text[start + 1..];
    let end = rest[3..].find("\n## ").map_or(rest.len(), |i| i + 3);
    &rest[..end]
}

fn unquote(cell: &str) -> &str {
    cell.trim().trim_matches('`')
}

fn parse_index(text: &str) -> Index {
    let mut entries = Vec::new();
    for line in section(text, "Files").lines() {
        if !line.starts_with("| `") {
            continue;
        }
        let cells: Vec<&str> = line.split('|').collect();
        assert!(cells.len() >= 6, "malformed Files row: {line}");
        let file = unquote(cells[1]).to_owned();
        let valid = match cells[2].trim() {
            "VALID" => true,
            "INVALID" => false,
            other => panic!("{file}: unknown status {other:?}"),
        };
        let form = Form::parse(cells[3].trim())
            .unwrap_or_else(|| panic!("{file}: unknown form {:?}", cells[3].trim()));
        let notes = cells[5..].join("|").trim().to_owned();
        entries.push(Entry {
            file,
            valid,
            form,
            notes,
        });
    }

    let mut expected = BTreeMap::new();
    let errors = section(text, "Expected errors for INVALID fixtures");
    for block in errors.split("\n### ").skip(1) {
        let (heading, body) = block.split_once('\n').unwrap_or((block, ""));
        let file = unquote(heading).to_owned();
        let fenced = first_fenced_block(body)
            .unwrap_or_else(|| panic!("{file}: expected errors without a fenced block"));
        expected.insert(file.clone(), parse_expectation(&file, fenced));
    }
    Index { entries, expected }
}

fn first_fenced_block(body: &str) -> Option<&str> {
    let start = body.find("```")?;
    let after = &body[start + 3..];
    let content_start = after.find('\n')? + 1;
    let content = &after[content_start..];
    let end = content.find("```")?;
    Some(&content[..end])
}

fn parse_expectation(file: &str, block: &str) -> Expected {
    if block.contains("violations:") {
        // Read line by line rather than as YAML: some lists were rebuilt from Go literals and
        // carry unquoted messages with `: ` in them, which is not valid YAML.
        let fields: BTreeSet<String> = block
            .lines()
            .filter_map(|line| {
                let line = line.trim_start();
                let line = line.strip_prefix("- ").unwrap_or(line);
                line.strip_prefix("field:")
            })
            .map(|value| unquote_yaml_scalar(value.trim()))
            .collect();
        assert!(!fields.is_empty(), "{file}: `violations:` without fields");
        return Expected::Violations(fields);
    }
    if block.trim_start().starts_with("HTTP/") {
        let json_start = block
            .find('{')
            .unwrap_or_else(|| panic!("{file}: HTTP response without a JSON body"));
        let body: serde_json::Value = serde_json::from_str(&block[json_start..])
            .unwrap_or_else(|e| panic!("{file}: HTTP body is not JSON: {e}"));
        let causes = body["causes"]
            .as_array()
            .unwrap_or_else(|| panic!("{file}: HTTP body has no `causes`"));
        let fields = causes
            .iter()
            .map(|c| {
                c["field"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{file}: cause without a field"))
                    .to_owned()
            })
            .collect();
        return Expected::Violations(fields);
    }
    let mut failing = BTreeMap::new();
    for line in block.lines() {
        if let Some(rest) = line.strip_prefix("resource[") {
            let (index, message) = rest
                .split_once("]: ")
                .unwrap_or_else(|| panic!("{file}: malformed kumactl line {line:?}"));
            let index: usize = index
                .parse()
                .unwrap_or_else(|_| panic!("{file}: bad document index in {line:?}"));
            failing.insert(index, message.to_owned());
        }
    }
    assert!(
        !failing.is_empty(),
        "{file}: unrecognised expectation format:\n{block}"
    );
    Expected::FailingDocuments(failing)
}

/// The resource type named by the file's prefix (`MeshTimeout__...`), if any (`Multi` is none).
fn type_of(file: &str) -> Option<ResourceType> {
    let prefix = file.split("__").next()?;
    ResourceType::from_name(prefix)
}

/// Whether the fixture exercises the new-style policy types (the other group of tests).
fn is_policy_fixture(file: &str) -> bool {
    type_of(file).is_some_and(|t| t.form() == SpecForm::Wrapped)
}

/// The outcome of one document.
#[derive(Debug)]
enum DocOutcome {
    ParseError(String),
    Checked {
        rtype: ResourceType,
        name: String,
        violations: Vec<(String, String)>,
        warnings: Vec<String>,
    },
}

impl DocOutcome {
    fn check(resource: &Resource, warnings: Vec<String>) -> DocOutcome {
        let violations = match validate_resource(resource) {
            Ok(()) => Vec::new(),
            Err(e) => e
                .violations
                .into_iter()
                .map(|v| (v.field, v.message))
                .collect(),
        };
        DocOutcome::Checked {
            rtype: resource.resource_type(),
            name: resource.meta.name.clone(),
            violations,
            warnings,
        }
    }
}

impl fmt::Display for DocOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DocOutcome::ParseError(e) => write!(f, "parse error: {e}"),
            DocOutcome::Checked {
                rtype,
                name,
                violations,
                warnings,
            } => {
                write!(f, "{rtype} {name:?}")?;
                if violations.is_empty() {
                    write!(f, " valid")?;
                } else {
                    write!(f, " violations:")?;
                    for (field, message) in violations {
                        write!(f, " [{field}: {message}]")?;
                    }
                }
                if !warnings.is_empty() {
                    write!(f, " warnings: {}", warnings.join(", "))?;
                }
                Ok(())
            }
        }
    }
}

/// The resource name to validate a bare spec with: the document's own `name:`, or the one the
/// INDEX notes say Kuma's test used, or `test`.
fn name_for_spec(entry: &Entry, flat_name: Option<String>) -> String {
    if let Some(name) = flat_name {
        return name;
    }
    for marker in ["resource name used by the test: ", "(name "] {
        if let Some(i) = entry.notes.find(marker) {
            let rest = &entry.notes[i + marker.len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '.')
                .collect();
            if !name.is_empty() {
                return name;
            }
        }
    }
    "test".to_owned()
}

fn evaluate(entry: &Entry, text: &str) -> Vec<DocOutcome> {
    match entry.form {
        Form::Full | Form::K8s | Form::Multi => parse_documents(text)
            .into_iter()
            .map(|doc| match doc {
                Ok(parsed) => DocOutcome::check(&parsed.resource, parsed.warnings),
                Err(e) => DocOutcome::ParseError(e.to_string()),
            })
            .collect(),
        Form::Spec | Form::Flat => {
            let rtype = type_of(&entry.file)
                .unwrap_or_else(|| panic!("{}: file prefix is not a resource type", entry.file));
            let (body, flat_name) = if entry.form == Form::Flat {
                strip_flat_header(&entry.file, text)
            } else {
                (text.to_owned(), None)
            };
            let outcome = match parse_spec(rtype, &body) {
                Err(e) => DocOutcome::ParseError(e.to_string()),
                Ok((spec, warnings)) => {
                    let mesh = match rtype.scope() {
                        Scope::Mesh => Some("default"),
                        Scope::Global => None,
                    };
                    let resource = Resource::new(name_for_spec(entry, flat_name), mesh, spec);
                    DocOutcome::check(&resource, warnings)
                }
            };
            vec![outcome]
        }
    }
}

/// Removes the top-level `type`, `mesh` and `name` keys Kuma ignores in FLAT fixtures; returns
/// the remaining YAML and the `name` value.
fn strip_flat_header(file: &str, text: &str) -> (String, Option<String>) {
    let mut value: serde_yaml::Value = serde_yaml::from_str(text)
        .unwrap_or_else(|e| panic!("{file}: FLAT fixture is not YAML: {e}"));
    let map = value
        .as_mapping_mut()
        .unwrap_or_else(|| panic!("{file}: FLAT fixture is not a mapping"));
    let name = map
        .remove("name")
        .and_then(|n| n.as_str().map(str::to_owned));
    map.remove("type");
    map.remove("mesh");
    let body = serde_yaml::to_string(&value)
        .unwrap_or_else(|e| panic!("{file}: cannot re-encode FLAT body: {e}"));
    (body, name)
}

/// Compares one file's outcome with the INDEX; `Err` explains the mismatch.
fn judge(entry: &Entry, expected: Option<&Expected>, docs: &[DocOutcome]) -> Result<(), String> {
    if docs.is_empty() {
        return Err("no documents".to_owned());
    }
    if entry.valid {
        let bad: Vec<String> = docs
            .iter()
            .enumerate()
            .filter(|(_, d)| {
                !matches!(d, DocOutcome::Checked { violations, .. } if violations.is_empty())
            })
            .map(|(i, d)| format!("document {i}: {d}"))
            .collect();
        return if bad.is_empty() {
            Ok(())
        } else {
            Err(bad.join("; "))
        };
    }
    match expected {
        None => Err("INVALID fixture without expected errors in INDEX.md".to_owned()),
        Some(Expected::Violations(fields)) => {
            let [doc] = docs else {
                return Err(format!("expected one document, got {}", docs.len()));
            };
            match doc {
                DocOutcome::ParseError(e) => Err(format!(
                    "expected violations {fields:?}, got a parse error: {e}"
                )),
                DocOutcome::Checked { violations, .. } => {
                    let got: BTreeSet<String> = violations.iter().map(|(f, _)| f.clone()).collect();
                    if &got == fields {
                        Ok(())
                    } else {
                        let missing: Vec<_> = fields.difference(&got).collect();
                        let extra: Vec<_> = got.difference(fields).collect();
                        Err(format!(
                            "violation paths differ: missing {missing:?}, unexpected {extra:?} ({doc})"
                        ))
                    }
                }
            }
        }
        Some(Expected::FailingDocuments(failing)) => {
            let mut problems = Vec::new();
            for (i, doc) in docs.iter().enumerate() {
                match (failing.get(&i), doc) {
                    (Some(kuma), DocOutcome::ParseError(ours)) => {
                        if kuma.contains("YAML") && !ours.contains("YAML") {
                            problems
                                .push(format!("document {i}: expected a YAML error, got {ours:?}"));
                        }
                        if let Some(t) = quoted_type(kuma) {
                            if !ours.contains(&format!("{t:?}")) {
                                problems.push(format!("document {i}: expected an error naming type {t:?}, got {ours:?}"));
                            }
                        }
                    }
                    (Some(kuma), other) => problems.push(format!(
                        "document {i}: expected failure ({kuma}), got {other}"
                    )),
                    (None, DocOutcome::Checked { violations, .. }) if violations.is_empty() => {}
                    (None, other) => {
                        problems.push(format!("document {i}: expected valid, got {other}"))
                    }
                }
            }
            for i in failing.keys().filter(|i| **i >= docs.len()) {
                problems.push(format!(
                    "document {i}: expected to fail but the stream has only {} documents",
                    docs.len()
                ));
            }
            if problems.is_empty() {
                Ok(())
            } else {
                Err(problems.join("; "))
            }
        }
    }
}

/// A plain, single- or double-quoted YAML scalar.
fn unquote_yaml_scalar(value: &str) -> String {
    if let Some(inner) = value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')) {
        return inner.replace("''", "'");
    }
    if value.starts_with('"') {
        if let Ok(s) = serde_json::from_str::<String>(value) {
            return s;
        }
    }
    value.to_owned()
}

/// The type in kumactl's `invalid resource type "Foo"`.
fn quoted_type(message: &str) -> Option<&str> {
    let rest = message.split("invalid resource type \"").nth(1)?;
    rest.split('"').next()
}

/// Runs every fixture in the group and panics with a list of the files that do not conform.
fn run_group(policies: bool) {
    let dir = fixtures_dir();
    let index = load_index();
    let mut failures = Vec::new();
    let mut count = 0;
    for entry in index
        .entries
        .iter()
        .filter(|e| is_policy_fixture(&e.file) == policies)
    {
        count += 1;
        let path = dir.join(&entry.file);
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        let docs = evaluate(entry, &text);
        let verdict = judge(entry, index.expected.get(&entry.file), &docs);
        let status = if entry.valid { "VALID" } else { "INVALID" };
        let warnings: usize = docs
            .iter()
            .map(|d| match d {
                DocOutcome::Checked { warnings, .. } => warnings.len(),
                DocOutcome::ParseError(_) => 0,
            })
            .sum();
        match &verdict {
            Ok(()) => println!(
                "PASS {status:<7} {:<5?} {} ({} doc(s), {warnings} warning(s))",
                entry.form,
                entry.file,
                docs.len()
            ),
            Err(why) => {
                println!("FAIL {status:<7} {:<5?} {}: {why}", entry.form, entry.file);
                failures.push(format!("{}: {why}", entry.file));
            }
        }
    }
    println!(
        "{} of {count} {} fixtures conform",
        count - failures.len(),
        if policies { "policy" } else { "core" }
    );
    assert!(
        failures.is_empty(),
        "{} of {count} fixtures do not conform:\n  {}",
        failures.len(),
        failures.join("\n  ")
    );
}

#[test]
fn index_lists_every_fixture_and_every_invalid_has_expectations() {
    let dir = fixtures_dir();
    let index = load_index();
    let listed: BTreeSet<&str> = index.entries.iter().map(|e| e.file.as_str()).collect();
    assert_eq!(listed.len(), index.entries.len(), "a file is listed twice");
    for entry in &index.entries {
        assert!(
            dir.join(&entry.file).is_file(),
            "{} is listed in INDEX.md but missing",
            entry.file
        );
        assert_eq!(
            index.expected.contains_key(&entry.file),
            !entry.valid,
            "{}: expected errors must be given exactly for INVALID files",
            entry.file
        );
        assert_eq!(
            entry.file.contains("__INVALID-"),
            !entry.valid,
            "{}: status disagrees with the file name",
            entry.file
        );
        if entry.form != Form::Multi && entry.form != Form::K8s {
            assert!(
                type_of(&entry.file).is_some(),
                "{}: prefix is not a known resource type",
                entry.file
            );
        }
    }
    let mut on_disk = Vec::new();
    for item in std::fs::read_dir(&dir).expect("fixtures directory is readable") {
        let name = item
            .expect("directory entry")
            .file_name()
            .to_string_lossy()
            .into_owned();
        if name.ends_with(".yaml") || name.ends_with(".yml") {
            on_disk.push(name);
        }
    }
    for name in &on_disk {
        assert!(
            listed.contains(name.as_str()),
            "{name} is in the fixtures folder but not listed in INDEX.md"
        );
    }
    assert_eq!(on_disk.len(), listed.len());
    assert!(index.expected.keys().all(|f| listed.contains(f.as_str())));
}

#[test]
fn core_fixtures_conform() {
    run_group(false);
}

#[test]
fn policy_fixtures_conform() {
    run_group(true);
}

#[test]
fn unknown_fields_are_accepted_with_warnings() {
    let file = "MeshHealthCheck__full-example-spec-only.yaml";
    let text = std::fs::read_to_string(fixtures_dir().join(file)).expect("fixture is readable");
    let (spec, warnings) =
        parse_spec(ResourceType::MeshHealthCheck, &text).expect("Kuma accepts this spec");
    assert!(
        !warnings.is_empty(),
        "{file}: misplaced fields must produce warnings"
    );
    for warning in &warnings {
        assert!(
            warning.contains("spec."),
            "{file}: warning does not name a field path: {warning}"
        );
    }
    let resource = Resource::new("test", Some("default"), spec);
    if let Err(e) = validate_resource(&resource) {
        panic!("{file}: must be accepted: {e}");
    }

    // Legacy types are as lenient: an unknown field is reported, not rejected.
    let docs = parse_documents(
        "type: Dataplane\nname: dp\nmesh: default\nnetworking:\n  address: 1.1.1.1\n  inbound:\n  - port: 80\n    colour: red\n    tags:\n      kuma.io/service: web\n",
    );
    let parsed = docs
        .into_iter()
        .next()
        .expect("one document")
        .expect("parses");
    assert_eq!(
        parsed.warnings,
        vec!["unknown field \"networking.inbound[0].colour\"".to_owned()]
    );
    assert!(validate_resource(&parsed.resource).is_ok());
}

#[test]
fn index_parser_reads_all_three_expectation_formats() {
    let index = load_index();
    let kinds = |pred: fn(&Expected) -> bool| index.expected.values().filter(|e| pred(e)).count();
    assert!(kinds(|e| matches!(e, Expected::Violations(_))) >= 20);
    assert_eq!(
        index.expected.get("Multi__INVALID-bad-yaml-unknown-type.yaml"),
        Some(&Expected::FailingDocuments(BTreeMap::from([
            (1, "failed to parse resource: invalid meta type: \"error converting YAML to JSON: yaml: found unexpected end of stream\"".to_owned()),
            (3, "failed to parse resource: invalid resource type \"Foo\"".to_owned()),
        ])))
    );
    assert_eq!(
        index.expected.get("MeshTimeout__INVALID-label-key.yaml"),
        Some(&Expected::Violations(BTreeSet::from([
            "labels[\"kuma.io/Not Valid!\"]".to_owned()
        ])))
    );
    assert_eq!(
        index
            .expected
            .get("ZoneIngress__INVALID-advertised-and-services.yaml"),
        Some(&Expected::Violations(BTreeSet::from([
            "networking.advertisedAddress.address".to_owned(),
            "networking.advertisedPort".to_owned(),
            "availableService[2].tags".to_owned(),
            "availableService[3].tags[\"kuma.io/service\"]".to_owned(),
            "availableService[4].tags[\"version\"]".to_owned(),
            "availableService[4].tags".to_owned(),
        ])))
    );
}

#[test]
fn judge_rejects_mismatches() {
    let entry = |valid| Entry {
        file: "X__f.yaml".to_owned(),
        valid,
        form: Form::Full,
        notes: String::new(),
    };
    let checked = |fields: &[&str]| DocOutcome::Checked {
        rtype: ResourceType::Mesh,
        name: "m".to_owned(),
        violations: fields
            .iter()
            .map(|f| (f.to_string(), "msg".to_owned()))
            .collect(),
        warnings: Vec::new(),
    };
    let expected = Expected::Violations(BTreeSet::from(["a".to_owned(), "b".to_owned()]));
    assert!(judge(&entry(false), Some(&expected), &[checked(&["b", "a", "a"])]).is_ok());
    assert!(judge(&entry(false), Some(&expected), &[checked(&["a"])]).is_err());
    assert!(judge(&entry(false), Some(&expected), &[checked(&["a", "b", "c"])]).is_err());
    assert!(judge(&entry(false), Some(&expected), &[checked(&[])]).is_err());
    assert!(judge(&entry(false), None, &[checked(&["a"])]).is_err());
    assert!(judge(&entry(true), None, &[checked(&[])]).is_ok());
    assert!(judge(&entry(true), None, &[checked(&["a"])]).is_err());
    assert!(judge(
        &entry(true),
        None,
        &[DocOutcome::ParseError("x".to_owned())]
    )
    .is_err());

    let failing = Expected::FailingDocuments(BTreeMap::from([
        (
            1,
            "invalid meta type: \"error converting YAML to JSON\"".to_owned(),
        ),
        (2, "invalid resource type \"Foo\"".to_owned()),
    ]));
    let yaml_error = || DocOutcome::ParseError("resource[1]: invalid YAML: eof".to_owned());
    let foo_error = || DocOutcome::ParseError("type: invalid resource type \"Foo\"".to_owned());
    assert!(judge(
        &entry(false),
        Some(&failing),
        &[checked(&[]), yaml_error(), foo_error()]
    )
    .is_ok());
    assert!(judge(
        &entry(false),
        Some(&failing),
        &[checked(&[]), foo_error(), foo_error()]
    )
    .is_err());
    assert!(judge(
        &entry(false),
        Some(&failing),
        &[checked(&[]), yaml_error(), checked(&[])]
    )
    .is_err());
    assert!(judge(
        &entry(false),
        Some(&failing),
        &[yaml_error(), yaml_error(), foo_error()]
    )
    .is_err());
    assert!(judge(&entry(false), Some(&failing), &[checked(&[]), yaml_error()]).is_err());
}

#[test]
fn valid_documents_round_trip_through_both_forms() {
    let dir = fixtures_dir();
    let index = load_index();
    let mut failures = Vec::new();
    for entry in index
        .entries
        .iter()
        .filter(|e| e.valid && matches!(e.form, Form::Full | Form::K8s | Form::Multi))
    {
        let text = std::fs::read_to_string(dir.join(&entry.file)).expect("fixture is readable");
        for (i, doc) in parse_documents(&text).into_iter().enumerate() {
            let Ok(parsed) = doc else { continue };
            let original = parsed.resource;
            let universal = mesh_api::to_universal(&original);
            let yaml = mesh_api::to_yaml(&universal);
            match parse_documents(&yaml).into_iter().next() {
                Some(Ok(again)) if again.resource == original && again.warnings.is_empty() => {}
                other => failures.push(format!(
                    "{} document {i}: universal form does not round-trip: {other:?}\n{yaml}",
                    entry.file
                )),
            }
            let kube = mesh_api::to_kubernetes(&original);
            let mut expected = original.clone();
            // The Kubernetes form has no modification time.
            expected.meta.modification_time = None;
            match mesh_api::parse_resource(kube.clone()) {
                Ok(again) if again.resource == expected && again.warnings.is_empty() => {}
                other => failures.push(format!(
                    "{} document {i}: Kubernetes form does not round-trip: {other:?}\n{kube}",
                    entry.file
                )),
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
