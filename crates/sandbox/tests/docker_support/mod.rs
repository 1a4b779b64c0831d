//! Shared helpers of the docker tests: connect or skip (with the reason printed), pick an
//! image to run sandboxes from, and make a tiny python project + wheelhouse.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use swegym_sandbox::docker::{DockerBackend, DockerOptions};
use swegym_sandbox::{EnvHandle, EnvSpec, LogParser, PreparedEnv, SourceSpec};

pub fn cache_root() -> PathBuf {
    PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into())).join(".cache/swegym")
}

pub fn slow_tests() -> bool {
    std::env::var("SWEGYM_SLOW_TESTS").is_ok_and(|v| v == "1")
}

/// A prerequisite is missing: with slow tests on (CI) the test fails — it never passes for
/// work it did not do —, otherwise it is skipped with the reason printed.
pub fn missing(why: &str) {
    assert!(!slow_tests(), "SWEGYM_SLOW_TESTS=1 asks for every test to run, but {why}");
    eprintln!("SKIPPED: {why}");
}

/// The backend, or `None` (with the reason printed) when no daemon answers.
pub async fn backend() -> Option<DockerBackend> {
    let options = DockerOptions { host: std::env::var("DOCKER_HOST").ok(), ..Default::default() };
    match DockerBackend::connect(cache_root(), options).await {
        Ok(b) => Some(b),
        Err(e) => {
            missing(&format!("no docker daemon answers: {e}"));
            None
        }
    }
}

/// An image to run plain sandboxes from: the base image when it exists (or may be built,
/// with SWEGYM_SLOW_TESTS=1); `None`, with the reason printed, otherwise.
pub async fn sandbox_image(backend: &DockerBackend) -> Option<EnvHandle> {
    let name = format!("swegym-base:{}", backend.options().base.hash());
    if backend.image_exists(&name).await.unwrap() || slow_tests() {
        let image = backend.ensure_base_image().await.expect("base image");
        return Some(EnvHandle::Image { image });
    }
    eprintln!("SKIPPED: base image {name} is not built yet and building it is slow; set SWEGYM_SLOW_TESTS=1");
    None
}

pub fn sh(dir: &Path, script: &str) -> String {
    let out = Command::new("bash").arg("-c").arg(script).current_dir(dir).output().unwrap();
    assert!(out.status.success(), "{script}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A git repo with a pyproject package `tinycalc` and a passing test.
pub fn tiny_project(dir: &Path) {
    std::fs::create_dir_all(dir.join("tinycalc")).unwrap();
    std::fs::create_dir_all(dir.join("tests")).unwrap();
    std::fs::write(
        dir.join("pyproject.toml"),
        "[build-system]\nrequires = [\"setuptools\"]\nbuild-backend = \"setuptools.build_meta\"\n\n[project]\nname = \"tinycalc\"\nversion = \"0.1.0\"\n\n[tool.setuptools]\npackages = [\"tinycalc\"]\n",
    )
    .unwrap();
    std::fs::write(dir.join("tinycalc/__init__.py"), "def add(a, b):\n    return a + b\n").unwrap();
    std::fs::write(
        dir.join("tests/test_add.py"),
        "import sys\nfrom tinycalc import add\n\ndef test_add():\n    assert add(2, 3) == 5\n\ndef test_interpreter():\n    assert sys.prefix == '/opt/venv'\n",
    )
    .unwrap();
    sh(dir, "git init -q -b main && git add -A && git -c user.name=t -c user.email=t@t commit -qm base");
}

/// `pip download setuptools wheel pytest` into `~/.cache/swegym/test-wheelhouse` once.
pub fn test_wheelhouse(python: &Path) -> Option<PathBuf> {
    let dir = cache_root().join("test-wheelhouse");
    let has_pytest =
        std::fs::read_dir(&dir).is_ok_and(|mut d| d.any(|e| e.is_ok_and(|e| e.file_name().to_string_lossy().starts_with("pytest-"))));
    if has_pytest {
        return Some(dir);
    }
    std::fs::create_dir_all(&dir).unwrap();
    let out = Command::new(python)
        .args(["-m", "pip", "download", "-q", "-d"])
        .arg(&dir)
        .args(["setuptools", "wheel", "pytest"])
        .output()
        .unwrap();
    if !out.status.success() {
        missing(&format!("cannot download the test wheelhouse: {}", String::from_utf8_lossy(&out.stderr)));
        return None;
    }
    Some(dir)
}

pub fn host_python(version: &str) -> Option<PathBuf> {
    let root = PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into())).join(".pyenv");
    match swegym_sandbox::source::find_python(&root, version) {
        Ok(p) => Some(p),
        Err(e) => {
            missing(&e.to_string());
            None
        }
    }
}

pub fn prepared_env(key: &str, repo_dir: &Path, wheelhouse: &Path, python: &Path, install: Vec<String>) -> PreparedEnv {
    let spec = EnvSpec {
        repo: "swegym/tinycalc".into(),
        version: "0.1".into(),
        python: "3.11".into(),
        source: SourceSpec::Git(repo_dir.to_path_buf()),
        pip: vec!["pytest".into()],
        install,
        test_cmd: "pytest -rA".into(),
        log_parser: LogParser::Pytest,
        test_timeout_s: 600,
    };
    PreparedEnv {
        key: key.into(),
        spec,
        repo_dir: repo_dir.to_path_buf(),
        wheelhouse: wheelhouse.to_path_buf(),
        python: python.to_path_buf(),
    }
}
