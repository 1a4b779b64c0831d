//! Which Python files of a repository are the library's own code, the files mutations are
//! planned in: not tests (the caller's rule, the harness's), not docs, examples,
//! benchmarks or build scripts.

/// Directories whose files are not the library's code, at any depth.
pub const SKIP_DIRS: [&str; 9] = ["docs", "doc", "examples", "example", "benchmarks", "bench", "scripts", "tools", "misc"];

/// File names that are build, test or version scaffolding, in any directory.
pub const SKIP_FILES: [&str; 7] = ["setup.py", "conftest.py", "noxfile.py", "tasks.py", "fabfile.py", "_version.py", "versioneer.py"];

/// Whether the repository-relative `path` is library code: not a test (`is_test`), not
/// a [`SKIP_FILES`] name, in no [`SKIP_DIRS`] directory.
pub fn is_library_source(path: &str, is_test: &dyn Fn(&str) -> bool) -> bool {
    if path.is_empty() || is_test(path) {
        return false;
    }
    let parts: Vec<&str> = path.split('/').collect();
    let name = parts.last().copied().unwrap_or("");
    !SKIP_FILES.contains(&name) && !parts[..parts.len() - 1].iter().any(|d| SKIP_DIRS.contains(d))
}

/// The library sources among the NUL-separated paths of `git ls-files -z -- '*.py'`, sorted.
pub fn library_sources(ls_files_z: &str, is_test: &dyn Fn(&str) -> bool) -> Vec<String> {
    let mut files: Vec<String> = ls_files_z.split('\0').filter(|p| is_library_source(p, is_test)).map(str::to_string).collect();
    files.sort();
    files
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_test(path: &str) -> bool {
        path.starts_with("tests/") || path.rsplit('/').next().is_some_and(|n| n.starts_with("test_"))
    }

    #[test]
    fn library_code_only_sorted() {
        let listed = "pkg/core.py\0setup.py\0docs/conf.py\0tests/test_core.py\0pkg/test_util.py\0pkg/_version.py\0a/examples/demo.py\0pkg/sub/__init__.py\0bench.py\0";
        assert_eq!(library_sources(listed, &is_test), ["bench.py", "pkg/core.py", "pkg/sub/__init__.py"]);
    }

    #[test]
    fn a_skipped_name_as_a_directory_or_a_file() {
        assert!(!is_library_source("src/pkg/tools/x.py", &is_test), "tools/ at any depth");
        assert!(is_library_source("src/pkg/tools.py", &is_test), "a module named like a skipped directory");
        assert!(!is_library_source("pkg/conftest.py", &is_test));
        assert!(!is_library_source("", &is_test));
    }
}
