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
