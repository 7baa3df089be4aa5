//! The folder tree is the code map: each layer of ingest may use the layers
//! below it and never one above or beside it. This reads every `crate::`
//! path in the source (comments aside) and fails on an import the wrong way.

use std::collections::BTreeMap;
use std::path::Path;

/// Each top-level module and the modules it may use (besides itself).
const MAY_USE: &[(&str, &[&str])] = &[
    (
        "app",
        &["http", "tasks", "domain", "meta", "store", "nats", "config"],
    ),
    ("http", &["domain", "meta", "store", "nats", "config"]),
    ("tasks", &["domain", "meta", "store", "nats", "config"]),
    ("domain", &["meta", "store", "nats", "config"]),
    ("meta", &["config"]),
    ("store", &["config"]),
    ("nats", &["config"]),
    ("config", &[]),
];

/// The top-level modules named by `crate::` paths in one line of code,
/// including grouped imports (`crate::{a, b::c}`).
fn crate_paths(line: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = line;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // The first name of each item at the group's own depth.
            let (mut depth, mut item_start) = (0, true);
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = true,
                    c if item_start && (c.is_alphanumeric() || c == '_') => {
                        item_start = false;
                        let name: String = group[i..]
                            .chars()
                            .take_while(|c| c.is_alphanumeric() || *c == '_')
                            .collect();
                        if name != "self" {
                            found.push(name);
                        }
                    }
                    _ => {}
                }
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            found.push(name);
        }
    }
    found
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The layer a file belongs to: its top-level folder or file under `src/`.
fn layer_of(src: &Path, file: &Path) -> Option<String> {
    let first = file.strip_prefix(src).ok()?.components().next()?;
    let name = first.as_os_str().to_str()?.trim_end_matches(".rs");
    (!matches!(name, "lib" | "main")).then(|| name.to_owned())
}

#[test]
fn no_layer_imports_one_above_or_beside_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let rules: BTreeMap<&str, &[&str]> = MAY_USE.iter().copied().collect();
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut wrong = Vec::new();
    for file in &files {
        let Some(layer) = layer_of(&src, file) else {
            continue;
        };
        let allowed = rules
            .get(layer.as_str())
            .unwrap_or_else(|| panic!("{} is in no layer: add it to MAY_USE", file.display()));
        let text = std::fs::read_to_string(file).unwrap();
        for (n, line) in text.lines().enumerate() {
            let code = line.trim_start();
            if code.starts_with("//") {
                continue;
            }
            if code.contains("super::super::") {
                wrong.push(format!(
                    "{}:{}: super::super:: leaves the layer; name it with crate::",
                    file.display(),
                    n + 1
                ));
            }
            for used in crate_paths(code) {
                if used != layer && !allowed.contains(&used.as_str()) {
                    wrong.push(format!("{}:{}: {layer} uses {used}", file.display(), n + 1));
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports against the layers:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_check_reads_single_and_grouped_paths() {
    assert_eq!(crate_paths("use crate::store::AccountRow;"), ["store"]);
    assert_eq!(
        crate_paths("use crate::{http, store::{self, X}};"),
        ["http", "store"]
    );
    assert_eq!(
        crate_paths("let x = crate::domain::Core::new(crate::config::C);"),
        ["domain", "config"]
    );
    assert!(crate_paths("use super::Core;").is_empty());
}
