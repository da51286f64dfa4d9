//! The YAML examples in the project's seed documents (`../shared/seeds/*.txt`, relative to the
//! repository root) are real Kuma resources: every ```yaml block must parse and validate.

use std::path::{Path, PathBuf};

use mesh_api::{parse_documents, validate_resource};

fn seeds_dir() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the crate lives inside the repository");
    let dir = root.join("../shared/seeds");
    assert!(
        dir.is_dir(),
        "seed documents not found: expected {} (the repository root's ../shared/seeds)",
        dir.display()
    );
    dir
}

/// The contents of every ```yaml fenced block in `text`.
fn yaml_blocks(text: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        let trimmed = line.trim();
        match &mut current {
            None if trimmed == "```yaml" || trimmed == "```yml" => current = Some(String::new()),
            None => {}
            Some(_) if trimmed == "```" => blocks.extend(current.take()),
            Some(block) => {
                block.push_str(line);
                block.push('\n');
            }
        }
    }
    assert!(current.is_none(), "unterminated ```yaml block");
    blocks
}

#[test]
fn extracts_fenced_yaml_blocks_only() {
    let text = "intro\n```yaml\na: 1\n```\n```bash\nls\n```\n  ```yaml\nb: 2\n  ```\n";
    assert_eq!(
        yaml_blocks(text),
        vec!["a: 1\n".to_owned(), "b: 2\n".to_owned()]
    );
}

#[test]
fn every_seed_yaml_block_parses_and_validates() {
    let dir = seeds_dir();
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("seeds directory is readable")
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "txt"))
        .collect();
    paths.sort();
    assert!(!paths.is_empty(), "no seed documents in {}", dir.display());

    let mut checked = 0;
    let mut failures = Vec::new();
    for path in &paths {
        let text = std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        let file = path
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        for (b, block) in yaml_blocks(&text).iter().enumerate() {
            for (d, doc) in parse_documents(block).into_iter().enumerate() {
                checked += 1;
                let place = format!("{file} block {b} document {d}");
                match doc {
                    Err(e) => failures.push(format!("{place}: {e}")),
                    Ok(parsed) => match validate_resource(&parsed.resource) {
                        Ok(()) => println!(
                            "PASS {place}: {} {:?} in mesh {:?}{}",
                            parsed.resource.resource_type(),
                            parsed.resource.meta.name,
                            parsed.resource.meta.mesh,
                            if parsed.warnings.is_empty() {
                                String::new()
                            } else {
                                format!(" (warnings: {})", parsed.warnings.join(", "))
                            }
                        ),
                        Err(e) => failures.push(format!("{place}: {e}")),
                    },
                }
            }
        }
    }
    assert!(checked > 0, "no ```yaml blocks found in {}", dir.display());
    assert!(
        failures.is_empty(),
        "{} of {checked} seed documents fail:\n  {}",
        failures.len(),
        failures.join("\n  ")
    );
}
