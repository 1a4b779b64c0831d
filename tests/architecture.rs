//! The invariants ARCHITECTURE.md states about the repository as a whole, checked on the
//! files git knows (tracked, plus untracked files that are not ignored).

mod common;

use std::process::Command;

/// The repository's own files: `git ls-files` of tracked and untracked, not ignored, files.
fn repo_files() -> Vec<std::path::PathBuf> {
    let root = common::repo_root();
    let out = Command::new("git")
        .args(["ls-files", "-z", "--cached", "--others", "--exclude-standard"])
        .current_dir(&root)
        .output()
        .expect("git runs (the tests need a git checkout of the repository)");
    assert!(out.status.success(), "git ls-files in {}: {}", root.display(), String::from_utf8_lossy(&out.stderr));
    out.stdout
        .split(|&b| b == 0)
        .filter(|p| !p.is_empty())
        .map(|p| root.join(String::from_utf8_lossy(p).as_ref()))
        .filter(|p| p.is_file())
        .collect()
}

/// "No file in the repository refers to a path beside the clone": a clone with nothing next
/// to it must build, test and benchmark (issue 33: the tests once read a sibling folder).
#[test]
fn no_file_refers_to_a_folder_beside_the_clone() {
    // Spelled in pieces so that this file does not match itself.
    let needles = [format!("..{}shared", '/'), format!("shared{}data", '/'), format!("shared{}baselines", '/')];
    let mut hits = Vec::new();
    let files = repo_files();
    assert!(files.len() > 100, "git ls-files found only {} files", files.len());
    for path in files {
        let Ok(text) = std::fs::read_to_string(&path) else { continue }; // binary files
        for (i, line) in text.lines().enumerate() {
            if needles.iter().any(|n| line.contains(n.as_str())) {
                hits.push(format!("{}:{}: {}", path.display(), i + 1, line.trim()));
            }
        }
    }
    assert!(hits.is_empty(), "files refer to a folder beside the clone:\n{}", hits.join("\n"));
}

/// Every end-to-end test file in tests/ is a `[[test]]` target of pipeline/Cargo.toml: one
/// left out compiles nowhere and runs never, silently.
#[test]
fn every_test_file_is_a_test_target() {
    let root = common::repo_root();
    let manifest = std::fs::read_to_string(root.join("pipeline/Cargo.toml")).unwrap();
    let mut missing = Vec::new();
    for entry in std::fs::read_dir(root.join("tests")).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".rs") && !manifest.contains(&format!("path = \"../tests/{name}\"")) {
            missing.push(name);
        }
    }
    assert!(missing.is_empty(), "tests/ files that pipeline/Cargo.toml does not list as [[test]]: {missing:?}");
}

/// `cargo metadata` of the workspace: (package name, manifest path relative to the root,
/// names of its workspace and `tch` dependencies of every kind).
fn workspace_packages() -> Vec<(String, String, Vec<String>)> {
    let root = common::repo_root();
    let out = Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--no-deps", "--offline"])
        .current_dir(&root)
        .output()
        .expect("cargo metadata runs");
    assert!(out.status.success(), "cargo metadata: {}", String::from_utf8_lossy(&out.stderr));
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let prefix = format!("{}/", root.canonicalize().unwrap().display());
    meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let path = p["manifest_path"].as_str().unwrap().trim_start_matches(&prefix).to_string();
            let deps = p["dependencies"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d["name"].as_str().unwrap().to_string())
                .filter(|n| n.starts_with("swegym") || n == "tch")
                .collect();
            (p["name"].as_str().unwrap().to_string(), path, deps)
        })
        .collect()
}

/// "No stage depends on another stage" and "`crates/schema` depends on nothing of ours".
#[test]
fn stages_depend_on_no_other_stage() {
    let packages = workspace_packages();
    let stages: Vec<&String> = packages.iter().filter(|(_, path, _)| path.starts_with("stages/")).map(|(name, _, _)| name).collect();
    assert!(stages.len() >= 8, "stages found: {stages:?}");
    for (name, path, deps) in &packages {
        if path.starts_with("stages/") {
            let on_stages: Vec<&String> = deps.iter().filter(|d| stages.contains(d)).collect();
            assert!(on_stages.is_empty(), "{name} ({path}) depends on the stages {on_stages:?}");
        }
        if name == "swegym-schema" {
            assert!(deps.is_empty(), "swegym-schema depends on {deps:?}");
        }
    }
}

/// Which crates link libtorch, as ARCHITECTURE.md says: `tch` directly in lm, train,
/// verifier and the binary; sample through lm; none of the others, even indirectly.
#[test]
fn only_the_model_crates_link_libtorch() {
    let packages = workspace_packages();
    let direct: Vec<&str> = packages.iter().filter(|(_, _, deps)| deps.iter().any(|d| d == "tch")).map(|(n, _, _)| n.as_str()).collect();
    let mut direct_sorted = direct.clone();
    direct_sorted.sort_unstable();
    assert_eq!(direct_sorted, ["swegym", "swegym-lm", "swegym-train", "swegym-verifier"]);
    // The closure: a crate links libtorch when it or a workspace dependency does.
    let mut linking: std::collections::BTreeSet<&str> = direct.iter().copied().collect();
    loop {
        let before = linking.len();
        for (name, _, deps) in &packages {
            if deps.iter().any(|d| linking.contains(d.as_str())) {
                linking.insert(name.as_str());
            }
        }
        if linking.len() == before {
            break;
        }
    }
    let expected: std::collections::BTreeSet<&str> = ["swegym", "swegym-lm", "swegym-sample", "swegym-train", "swegym-verifier"].into_iter().collect();
    assert_eq!(linking, expected, "the crates that link libtorch (directly or not)");
}

/// The `pipeline` modules' imports (`crate::<module>`): no circles, and no module imports
/// the entry file (`main.rs` holds only parsing and dispatch).
#[test]
fn pipeline_modules_import_in_one_direction() {
    let src = common::repo_root().join("pipeline/src");
    let main = std::fs::read_to_string(src.join("main.rs")).unwrap();
    let modules: Vec<String> =
        main.lines().filter_map(|l| l.trim().strip_prefix("mod ").and_then(|m| m.strip_suffix(';'))).map(str::to_string).collect();
    assert!(modules.len() > 10, "{modules:?}");
    let mut edges: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> = Default::default();
    let mut from_main = Vec::new();
    for module in &modules {
        let mut files = Vec::new();
        let file = src.join(format!("{module}.rs"));
        if file.exists() {
            files.push(file);
        }
        collect_rs(&src.join(module), &mut files);
        let uses = edges.entry(module.clone()).or_default();
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap();
            for (i, _) in text.match_indices("crate::") {
                let rest = &text[i + "crate::".len()..];
                let names: Vec<&str> = if let Some(group) = rest.strip_prefix('{') {
                    group.split('}').next().unwrap().split(',').map(|n| n.trim().split("::").next().unwrap().trim()).collect()
                } else {
                    vec![rest.split(|c: char| !(c.is_alphanumeric() || c == '_')).next().unwrap()]
                };
                for name in names.into_iter().filter(|n| !n.is_empty()) {
                    if modules.iter().any(|m| m == name) {
                        if name != module {
                            uses.insert(name.to_string());
                        }
                    } else {
                        from_main.push(format!("{}: crate::{name}", f.display()));
                    }
                }
            }
        }
    }
    assert!(from_main.is_empty(), "modules importing from the entry file: {from_main:?}");
    // Depth-first search for a cycle.
    fn visit<'a>(
        m: &'a str,
        edges: &'a std::collections::BTreeMap<String, std::collections::BTreeSet<String>>,
        path: &mut Vec<&'a str>,
        done: &mut std::collections::BTreeSet<&'a str>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|p| *p == m) {
            return Some(path[at..].iter().map(|s| s.to_string()).chain([m.to_string()]).collect());
        }
        if done.contains(m) {
            return None;
        }
        path.push(m);
        for next in edges.get(m).into_iter().flatten() {
            if let Some(cycle) = visit(next, edges, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(m);
        None
    }
    let mut done = Default::default();
    for m in edges.keys() {
        if let Some(cycle) = visit(m, &edges, &mut Vec::new(), &mut done) {
            panic!("an import circle in pipeline/src: {}", cycle.join(" → "));
        }
    }
}

/// "Reads no environment variables" (ARCHITECTURE.md's invariants for `sandbox`, `lm`,
/// `sample`, `train`, `verifier`, and every other stage): the binary reads them and hands
/// the values in. Two reads are the documented exceptions: `swegym_lm::init_cpu_runtime`
/// (the oneDNN cap, called by `main` only) and the sandbox's lookup of a host program on
/// `PATH`. Test modules (`#[cfg(test)] mod …`, to the end of the file) are left out.
#[test]
fn library_crates_and_stages_read_no_environment_variables() {
    let root = common::repo_root();
    let mut files = Vec::new();
    for dir in ["crates", "stages"] {
        for entry in std::fs::read_dir(root.join(dir)).unwrap().flatten() {
            collect_rs(&entry.path().join("src"), &mut files);
        }
    }
    assert!(files.len() > 30, "{files:?}");
    // (file, what the excused line reads): init_cpu_runtime's `key` is ONEDNN_ISA_CAP's.
    let allowed = [("crates/lm/src/lib.rs", "(key"), ("crates/sandbox/src/docker/images.rs", "var_os(\"PATH\")")];
    let mut reads = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        // The file up to its test module (a `#[cfg(test)]` on a single item mid-file, as in
        // q8_weights.rs, does not end the code).
        let lines: Vec<&str> = text.lines().collect();
        let end = (0..lines.len())
            .find(|&i| lines[i].trim() == "#[cfg(test)]" && lines.get(i + 1).is_some_and(|l| l.trim_start().starts_with("mod ")))
            .unwrap_or(lines.len());
        let rel = f.strip_prefix(&root).unwrap().to_string_lossy().to_string();
        for (n, line) in lines[..end].iter().enumerate() {
            let reads_env = ["env::var(", "env::var_os(", "env::set_var(", "env::vars("].iter().any(|p| line.contains(p));
            if reads_env && !line.trim_start().starts_with("//") {
                let excused = allowed.iter().any(|(file, what)| rel == *file && line.contains(what));
                if !excused {
                    reads.push(format!("{rel}:{}: {}", n + 1, line.trim()));
                }
            }
        }
    }
    assert!(reads.is_empty(), "environment read inside a library crate or stage (hand the value in from the binary): {reads:#?}");
}

/// Each `fn` of a Rust file with its line and length (from the `fn` line to the closing
/// brace at its indent, inclusive); declarations without a body are left out.
fn function_lengths(text: &str) -> Vec<(usize, String, usize)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for (start, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start();
        let mut rest = trimmed;
        for prefix in ["pub(crate) ", "pub(super) ", "pub ", "const ", "async ", "unsafe ", "extern \"C\" "] {
            rest = rest.strip_prefix(prefix).unwrap_or(rest);
        }
        let Some(after) = rest.strip_prefix("fn ") else { continue };
        let name: String = after.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
        let indent = line.len() - trimmed.len();
        // The line that opens the body (a `;` first: a declaration).
        let Some(open) = (start..lines.len()).find(|&j| lines[j].contains('{') || lines[j].trim_end().ends_with(';')) else { continue };
        if !lines[open].contains('{') || lines[open].matches('{').count() == lines[open].matches('}').count() {
            continue;
        }
        let close = (open + 1..lines.len()).find(|&j| lines[j].len() - lines[j].trim_start().len() == indent && lines[j].trim_start().starts_with('}'));
        if let Some(close) = close {
            out.push((start + 1, name, close - start + 1));
        }
    }
    out
}

/// "The longest function in `pipeline/` is under 60 lines" (issue 27): the binary parses,
/// dispatches and calls stages in short named steps.
#[test]
fn pipeline_functions_are_under_60_lines() {
    let mut files = Vec::new();
    collect_rs(&common::repo_root().join("pipeline/src"), &mut files);
    assert!(files.len() > 20, "{files:?}");
    let mut long = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        for (line, name, n) in function_lengths(&text) {
            if n >= 60 {
                long.push(format!("{}:{line} {name} ({n} lines)", f.display()));
            }
        }
    }
    assert!(long.is_empty(), "functions of 60 lines or more in pipeline/src: {long:#?}");
    // The measure itself, on a planted function of 61 lines and a one-line one.
    let planted = format!("impl X {{\n    fn long() {{\n{}    }}\n    fn short() {{ }}\n}}\n", "        a();\n".repeat(59));
    assert_eq!(function_lengths(&planted), [(2, "long".to_string(), 61)]);
}

fn collect_rs(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect_rs(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}
