//! Compiles Envoy's .proto files (shipped inside the envoy-types crate) into one encoded
//! `FileDescriptorSet` with protox (pure Rust, no system protoc), written to
//! `$OUT_DIR/envoy_descriptors.bin`: every file under `envoy/config`, `envoy/extensions` and
//! `envoy/service/discovery`, with their imports, so that any resource or `typed_config` the
//! generators emit can be rendered as JSON by reflection.
//!
//! envoy-types' directory is found with `cargo metadata` for the target platform (its
//! `manifest_path`); set `MERIDIAN_ENVOY_PROTO_DIR` to an envoy-types `proto/` directory to
//! override. protox resolves
//! some of Envoy's relative type names differently from protoc (see [`shadowing_fix`]); those
//! names are written fully qualified in the sources it is served, so the result is protoc's.
//! Cost: about 2 s per run (402 files, ~600 KiB of descriptors); it reruns only when this file,
//! `Cargo.lock` or `MERIDIAN_ENVOY_PROTO_DIR` changes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use protox::file::{
    ChainFileResolver, File, FileResolver, GoogleFileResolver, IncludeFileResolver,
};
use protox::prost_reflect::DescriptorPool;

/// The directories (under envoy-types' `proto/data-plane-api`) whose files are compiled.
const ROOTS: [&str; 3] = [
    "envoy/config",
    "envoy/extensions",
    "envoy/service/discovery",
];

/// The include roots under envoy-types' `proto/`, as its own code generation uses them;
/// `google/protobuf` comes with protox.
const INCLUDES: [&str; 8] = [
    "data-plane-api",
    "xds",
    "googleapis",
    "protoc-gen-validate",
    "cel-spec/proto",
    "opentelemetry-proto",
    "client_model",
    "ratelimit/api",
];

const OVERRIDE: &str = "MERIDIAN_ENVOY_PROTO_DIR";

fn main() {
    if let Err(message) = build() {
        // A plain panic message is what cargo shows for a failed build script.
        panic!("config-dump build script: {message}");
    }
}

fn build() -> Result<(), String> {
    let started = Instant::now();
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed={OVERRIDE}");
    let proto = match std::env::var_os(OVERRIDE) {
        Some(dir) => PathBuf::from(dir),
        None => envoy_types_proto_dir()?,
    };
    let api = proto.join("data-plane-api");
    if !api
        .join("envoy/config/listener/v3/listener.proto")
        .is_file()
    {
        return Err(format!(
            "{} does not hold Envoy's protos (expected data-plane-api/envoy/config/listener/v3/\
             listener.proto); set {OVERRIDE} to envoy-types' proto/ directory",
            proto.display()
        ));
    }
    let includes: Vec<PathBuf> = INCLUDES.iter().map(|dir| proto.join(dir)).collect();
    let mut files = Vec::new();
    for root in ROOTS {
        collect_protos(&api.join(root), &mut files)?;
    }
    files.sort();
    let patches = Patches::default();
    let mut resolver = ChainFileResolver::new();
    for include in &includes {
        resolver.add(IncludeFileResolver::new(include.clone()));
    }
    resolver.add(GoogleFileResolver::new());
    let mut compiler = protox::Compiler::with_file_resolver(PatchingResolver {
        inner: resolver,
        patches: patches.clone(),
    });
    compiler.include_imports(true).include_source_info(false);
    let mut patched = 0;
    for file in &files {
        loop {
            let Err(error) = compiler.open_file(file) else {
                break;
            };
            let fix = shadowing_fix(&error, &compiler.descriptor_pool())
                .ok_or_else(|| format!("compiling {}: {error}", file.display()))?;
            let mut map = patches.0.lock().map_err(|_| "poisoned")?;
            let list = map.entry(fix.file).or_default();
            if list.contains(&fix.replace) {
                return Err(format!(
                    "compiling {}: {error} (patching did not help)",
                    file.display()
                ));
            }
            list.push(fix.replace);
            patched += 1;
        }
    }
    let encoded = compiler.encode_file_descriptor_set();
    let out = PathBuf::from(std::env::var_os("OUT_DIR").ok_or("OUT_DIR is not set")?)
        .join("envoy_descriptors.bin");
    std::fs::write(&out, &encoded).map_err(|e| format!("{}: {e}", out.display()))?;
    // Shown with `cargo build -vv`; kept out of normal builds.
    eprintln!(
        "config-dump: compiled {} Envoy protos ({patched} names qualified), {} KiB of descriptors, in {:?}",
        files.len(),
        encoded.len() / 1024,
        started.elapsed()
    );
    Ok(())
}

fn collect_protos(dir: &Path, files: &mut Vec<PathBuf>) -> Result<(), String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for entry in entries {
        let path = entry.map_err(|e| format!("{}: {e}", dir.display()))?.path();
        if path.is_dir() {
            collect_protos(&path, files)?;
        } else if path.extension().is_some_and(|x| x == "proto") {
            files.push(path);
        }
    }
    Ok(())
}

/// envoy-types' `proto/` directory, from the `manifest_path` `cargo metadata` reports for it.
fn envoy_types_proto_dir() -> Result<PathBuf, String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let manifest_dir =
        std::env::var_os("CARGO_MANIFEST_DIR").ok_or("CARGO_MANIFEST_DIR is not set")?;
    // Offline first: a build normally has every package already. A build of one package on a
    // fresh machine (`cargo build -p zone-proxies`) has only its own dependencies downloaded,
    // and `cargo metadata` wants the whole workspace's: then it may download the rest.
    let mut failures = Vec::new();
    let mut output = None;
    for offline in [true, false] {
        let mut command = Command::new(&cargo);
        command
            .args(["metadata", "--format-version", "1"])
            .current_dir(&manifest_dir);
        if offline {
            command.arg("--offline");
        }
        // Only this target's packages: without the filter cargo wants every platform's
        // dependencies (android, windows...) downloaded, which a fresh machine has not done.
        if let Some(target) = std::env::var_os("TARGET") {
            command.arg("--filter-platform").arg(target);
        }
        let run = command.output().map_err(|e| {
            format!("cannot run `cargo metadata` to find envoy-types: {e}; set {OVERRIDE}")
        })?;
        if run.status.success() {
            output = Some(run);
            break;
        }
        failures.push(format!(
            "`cargo metadata{}` failed ({}): {}",
            if offline { " --offline" } else { "" },
            run.status,
            String::from_utf8_lossy(&run.stderr).trim()
        ));
    }
    let Some(output) = output else {
        return Err(format!(
            "{}; set {OVERRIDE} to envoy-types' proto/ directory",
            failures.join("; then ")
        ));
    };
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout)
        .map_err(|e| format!("`cargo metadata` printed no JSON: {e}"))?;
    // A change of envoy-types' version changes Cargo.lock: compile the new protos then.
    if let Some(root) = metadata["workspace_root"].as_str() {
        println!("cargo:rerun-if-changed={root}/Cargo.lock");
    }
    let manifest = metadata["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == "envoy-types")
        .and_then(|p| p["manifest_path"].as_str())
        .ok_or_else(|| {
            format!("envoy-types is not among the packages `cargo metadata` lists; set {OVERRIDE}")
        })?;
    let proto = Path::new(manifest)
        .parent()
        .map(|dir| dir.join("proto"))
        .ok_or_else(|| format!("envoy-types' manifest path {manifest:?} has no directory"))?;
    if !proto.is_dir() {
        return Err(format!(
            "envoy-types at {manifest} ships no proto/ directory; set {OVERRIDE}"
        ));
    }
    Ok(proto)
}

/// A relative type name and its fully qualified replacement.
type Replacement = (String, String);

/// Per file name, the relative type names to write fully qualified.
#[derive(Clone, Default)]
struct Patches(Arc<Mutex<HashMap<String, Vec<Replacement>>>>);

/// Serves the .proto files with their [`Patches`] applied.
struct PatchingResolver {
    inner: ChainFileResolver,
    patches: Patches,
}

impl FileResolver for PatchingResolver {
    fn resolve_path(&self, path: &Path) -> Option<String> {
        self.inner.resolve_path(path)
    }

    fn open_file(&self, name: &str) -> Result<File, protox::Error> {
        let file = self.inner.open_file(name)?;
        let patches = self
            .patches
            .0
            .lock()
            .map_err(|_| protox::Error::new("poisoned"))?;
        match (patches.get(name), file.source()) {
            (Some(list), Some(source)) => {
                let mut source = source.to_owned();
                for (relative, absolute) in list {
                    source = replace_reference(&source, relative, absolute);
                }
                File::from_source(name, &source)
            }
            _ => Ok(file),
        }
    }
}

/// A fix for protox's resolution of a relative name: in which file to write which name how.
struct Fix {
    file: String,
    replace: Replacement,
}

/// protox (through prost-reflect) resolves the first component of a relative name such as
/// `config.core.v3.DataSource` against every package it has seen, where protoc considers only
/// the packages of the file's imports: inside `envoy.extensions.filters.http.lua.v3`, a package
/// `envoy.extensions.config` defined by an unrelated file shadows `envoy.config`, and the file
/// fails with "'X' resolves to 'Y', which is not defined". protoc would go on outwards; so does
/// this: the first enclosing scope of Y's where X names a known type is the answer, written
/// fully qualified (`.envoy.config.core.v3.DataSource`) into that file.
fn shadowing_fix(error: &protox::Error, pool: &DescriptorPool) -> Option<Fix> {
    let message = error.to_string();
    let rest = message.strip_prefix('\'')?;
    let (relative, rest) = rest.split_once("' resolves to '")?;
    let (shadowed, _) = rest.split_once("', which is not defined")?;
    let mut scope = shadowed.strip_suffix(relative)?.strip_suffix('.')?;
    while let Some((outer, _)) = scope.rsplit_once('.') {
        scope = outer;
        let candidate = format!("{scope}.{relative}");
        if pool.get_message_by_name(&candidate).is_some()
            || pool.get_enum_by_name(&candidate).is_some()
        {
            return Some(Fix {
                file: error.file()?.to_owned(),
                replace: (relative.to_owned(), format!(".{candidate}")),
            });
        }
    }
    let top =
        pool.get_message_by_name(relative).is_some() || pool.get_enum_by_name(relative).is_some();
    if top {
        return Some(Fix {
            file: error.file()?.to_owned(),
            replace: (relative.to_owned(), format!(".{relative}")),
        });
    }
    None
}

/// `source` with every whole reference to `name` (not part of a longer dotted name) replaced.
fn replace_reference(source: &str, name: &str, replacement: &str) -> String {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '.';
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(at) = rest.find(name) {
        let before = rest[..at].chars().next_back();
        let after = rest[at + name.len()..].chars().next();
        out.push_str(&rest[..at]);
        if before.is_some_and(ident) || after.is_some_and(ident) {
            out.push_str(name);
        } else {
            out.push_str(replacement);
        }
        rest = &rest[at + name.len()..];
    }
    out.push_str(rest);
    out
}
