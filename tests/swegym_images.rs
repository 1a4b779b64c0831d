//! End to end on SWE-Gym's own layout: a Parquet dataset written by pyarrow in SWE-Gym's
//! columns, an `environments.toml` whose spec is a per-instance image template (as
//! `datasets/swe-gym/environments.toml`), and `swegym evaluate --backend docker` running in
//! locally built stand-ins for the `xingyaoww/sweb.eval.x86_64.*` images (repo at /testbed
//! at the base commit, `source /opt/miniconda3/bin/activate && conda activate testbed`).
//! `swegym sample --policy oracle --evaluate` resolves the task there too (patch extraction
//! inside the image's /testbed). The local backend refuses such specs with a message naming
//! `--backend docker`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// The stand-in images' name template (a SWE-Gym name under a test namespace).
const TEMPLATE: &str = "swegym-test/sweb.eval.x86_64.{id}";
const REPO: &str = "swegym/standin";

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@t")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@t")
        .env("GIT_AUTHOR_DATE", "2024-01-01T00:00:00Z")
        .env("GIT_COMMITTER_DATE", "2024-01-01T00:00:00Z")
        .output()
        .expect("git runs");
    assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// The task's repo (at its base commit, with a bug in `add`), its gold patch and test patch.
struct TinyRepo {
    dir: PathBuf,
    base_commit: String,
    patch: String,
    test_patch: String,
}

fn tiny_repo(root: &Path) -> TinyRepo {
    let dir = root.join("standin");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("calc.py"), "def add(a, b):\n    return a - b\n\n\ndef sub(a, b):\n    return a - b\n").unwrap();
    std::fs::write(dir.join("test_calc.py"), "from calc import add, sub\n\n\ndef test_sub():\n    assert sub(5, 3) == 2\n").unwrap();
    // Only so the stand-in's env build (`pip download` of the project's deps) can read it.
    std::fs::write(
        dir.join("pyproject.toml"),
        "[build-system]\nrequires = [\"setuptools\"]\nbuild-backend = \"setuptools.build_meta\"\n\n[project]\nname = \"calc\"\nversion = \"0.1\"\n\n[tool.setuptools]\npy-modules = [\"calc\"]\n",
    )
    .unwrap();
    git(&dir, &["init", "-q", "-b", "main"]);
    git(&dir, &["add", "-A"]);
    git(&dir, &["commit", "-qm", "base"]);
    let base_commit = git(&dir, &["rev-parse", "HEAD"]).trim().to_string();
    std::fs::write(dir.join("calc.py"), "def add(a, b):\n    return a + b\n\n\ndef sub(a, b):\n    return a - b\n").unwrap();
    let patch = git(&dir, &["diff", "--no-color"]);
    git(&dir, &["checkout", "-q", "--", "calc.py"]);
    let mut tests = std::fs::read_to_string(dir.join("test_calc.py")).unwrap();
    tests.push_str("\n\ndef test_add():\n    assert add(2, 3) == 5\n");
    std::fs::write(dir.join("test_calc.py"), tests).unwrap();
    let test_patch = git(&dir, &["diff", "--no-color"]);
    git(&dir, &["checkout", "-q", "--", "test_calc.py"]);
    TinyRepo { dir, base_commit, patch, test_patch }
}

/// Writes `ids` as SWE-Gym rows with pyarrow: SWE-Gym's 11 columns, the test lists as
/// `list<string>`, no `environment_setup_commit`.
fn write_swe_gym_parquet(path: &Path, repo: &TinyRepo, ids: &[&str]) {
    let python = cache_root().join("venv/bin/python");
    assert!(python.exists(), "{} missing: run `make setup`", python.display());
    let rows: Vec<serde_json::Value> = ids
        .iter()
        .map(|id| {
            serde_json::json!({
                "instance_id": id, "repo": REPO, "base_commit": repo.base_commit, "patch": repo.patch,
                "test_patch": repo.test_patch, "problem_statement": "add() subtracts", "hints_text": "",
                "created_at": "2024-01-01T00:00:00Z", "version": "1.0",
                "FAIL_TO_PASS": ["test_calc.py::test_add"], "PASS_TO_PASS": ["test_calc.py::test_sub"],
            })
        })
        .collect();
    let script = r#"
import sys, json, pyarrow as pa, pyarrow.parquet as pq
rows = json.loads(sys.argv[2])
lists = ("FAIL_TO_PASS", "PASS_TO_PASS")
names = ["instance_id", "repo", "base_commit", "patch", "test_patch", "problem_statement", "hints_text", "created_at", "version", *lists]
table = pa.table({n: pa.array([r[n] for r in rows], type=pa.list_(pa.string()) if n in lists else pa.string()) for n in names})
pq.write_table(table, sys.argv[1])
"#;
    let out = Command::new(&python).arg("-c").arg(script).arg(path).arg(serde_json::to_string(&rows).unwrap()).output().unwrap();
    assert!(out.status.success(), "pyarrow: {}", String::from_utf8_lossy(&out.stderr));
}

fn write_predictions(path: &Path, preds: &[(&str, &str)]) {
    let text: String = preds
        .iter()
        .map(|(id, patch)| format!("{}\n", serde_json::json!({"instance_id": id, "model_name_or_path": "m", "model_patch": patch})))
        .collect();
    std::fs::write(path, text).unwrap();
}

fn write_specs(path: &Path) {
    let toml = format!(
        "[[environment]]\nrepo = \"{REPO}\"\nversion = \"*\"\nimage = \"{TEMPLATE}\"\ntest_cmd = \"pytest --no-header -rA --tb=no -p no:cacheprovider\"\ntest_timeout_s = 120\n"
    );
    std::fs::write(path, toml).unwrap();
}

fn verdict<'a>(rows: &'a serde_json::Value, id: &str) -> &'a serde_json::Value {
    rows.as_array().unwrap().iter().find(|r| r["instance_id"] == id).unwrap_or_else(|| panic!("no verdict for {id}: {rows}"))
}

#[test]
fn image_specs_are_refused_by_the_local_backend() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tiny_repo(tmp.path());
    let dataset = tmp.path().join("SWE-Gym.parquet");
    write_swe_gym_parquet(&dataset, &repo, &["swegym__standin-1"]);
    write_predictions(&tmp.path().join("preds.jsonl"), &[("swegym__standin-1", &repo.patch)]);
    write_specs(&tmp.path().join("environments.toml"));
    let out_dir = tmp.path().join("out");
    // Its only job failed in the infrastructure: exit 4, the verdict still written.
    let stderr = fails(swegym().args(["evaluate", "--backend", "local"]).arg("--dataset").arg(&dataset).arg("--predictions")
        .arg(tmp.path().join("preds.jsonl")).arg("--env-specs").arg(tmp.path().join("environments.toml")).arg("--out").arg(&out_dir), 4);
    assert!(stderr.contains("every one of 1 grading jobs failed in the infrastructure"), "{stderr}");
    let rows = read_parquet_with_pyarrow(&out_dir.join("verdicts.parquet"));
    let v = verdict(&rows, "swegym__standin-1");
    assert_eq!(v["status"], "env_error", "{v}");
    let error = v["error"].as_str().unwrap();
    assert!(error.contains("swegym-test/sweb.eval.x86_64.swegym_s_standin-1") && error.contains("--backend docker"), "{error}");
}

/// Builds the stand-in: the base image with a venv holding pytest (a swegym env image of the
/// tiny repo, `install = []`), plus `/opt/miniconda3/bin/activate` whose `conda activate
/// testbed` puts that venv first on PATH; tagged under each name in `images`.
fn build_stand_in(root: &Path, repo: &TinyRepo, images: &[String]) {
    use swegym_sandbox::docker::{DockerBackend, DockerOptions};
    use swegym_sandbox::{source, Backend, EnvHandle, EnvSpecs};
    let mut specs = EnvSpecs::default();
    let spec_text = format!(
        "[[environment]]\nrepo = \"swegym/standin-env\"\nversion = \"1\"\ngit = \"{}\"\npip = [\"pytest\"]\ninstall = []\n",
        repo.dir.display()
    );
    specs.load_str(&spec_text, root, &root.join("standin-env.toml")).unwrap();
    let spec = specs.get("swegym/standin-env", "1").unwrap().clone();
    let home = PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into()));
    let opts = source::SourceOptions { cache_root: cache_root(), pyenv_root: home.join(".pyenv") };
    let prepared = source::prepare_env(&spec, Some(&repo.base_commit), &opts).expect("preparing the stand-in's venv source");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let env_image = runtime.block_on(async {
        let options = DockerOptions { host: std::env::var("DOCKER_HOST").ok(), ..Default::default() };
        let backend = DockerBackend::connect(cache_root(), options).await.expect("docker");
        match backend.ensure_env(&prepared).await.expect("building the stand-in's env image") {
            EnvHandle::Image { image } => image,
            other => panic!("unexpected handle {other:?}"),
        }
    });
    let name = format!("swegym-standin-build-{}", std::process::id());
    let activate = "conda() { if [ \"$1\" = activate ] && [ \"$2\" = testbed ]; then export CONDA_DEFAULT_ENV=testbed PATH=/opt/venv/bin:$PATH; else return 1; fi; }";
    let script = format!("mkdir -p /opt/miniconda3/bin && printf '%s\\n' '{activate}' > /opt/miniconda3/bin/activate");
    let docker = |args: &[&str]| {
        let out = Command::new("docker").args(args).output().expect("docker runs");
        assert!(out.status.success(), "docker {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    docker(&["run", "--name", &name, "--network", "none", "--entrypoint", "bash", &env_image, "-c", &script]);
    docker(&["commit", &name, &images[0]]);
    docker(&["rm", "-f", &name]);
    for image in &images[1..] {
        docker(&["tag", &images[0], image]);
    }
}

/// Removes the stand-in images even when the test fails.
struct RemoveImages(Vec<String>);

impl Drop for RemoveImages {
    fn drop(&mut self) {
        for image in &self.0 {
            let _ = Command::new("docker").args(["rmi", "-f", image]).output();
        }
    }
}

#[test]
fn swe_gym_images_grade_gold_and_empty_patches_docker() {
    let test = "swe_gym_images_grade_gold_and_empty_patches_docker";
    if !slow(test) || !docker(test) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let repo = tiny_repo(tmp.path());
    // gold → resolved, empty → empty_patch, and a third instance whose image is not there.
    let (gold, empty, missing) = ("swegym__standin-1", "swegym__standin-2", "swegym__standin-3");
    let images: Vec<String> = [gold, empty].iter().map(|id| TEMPLATE.replace("{id}", &id.replace("__", "_s_"))).collect();
    let _cleanup = RemoveImages(images.clone());
    build_stand_in(tmp.path(), &repo, &images);

    let dataset = tmp.path().join("SWE-Gym.parquet");
    write_swe_gym_parquet(&dataset, &repo, &[gold, empty, missing]);
    let preds = tmp.path().join("preds.jsonl");
    write_predictions(&preds, &[(gold, &repo.patch), (empty, ""), (missing, &repo.patch)]);
    let specs = tmp.path().join("environments.toml");
    write_specs(&specs);
    let out_dir = tmp.path().join("out");
    run_ok(swegym().args(["evaluate", "--backend", "docker", "-j", "2"]).arg("--dataset").arg(&dataset).arg("--predictions")
        .arg(&preds).arg("--env-specs").arg(&specs).arg("--out").arg(&out_dir));

    let rows = read_parquet_with_pyarrow(&out_dir.join("verdicts.parquet"));
    let v = verdict(&rows, gold);
    assert_eq!((v["status"].as_str(), v["resolved"].as_bool()), (Some("resolved"), Some(true)), "{v}");
    assert_eq!((v["fail_to_pass_passed"].as_u64(), v["pass_to_pass_passed"].as_u64()), (Some(1), Some(1)), "{v}");
    let v = verdict(&rows, empty);
    assert_eq!(v["status"], "empty_patch", "{v}");
    let v = verdict(&rows, missing);
    assert_eq!(v["status"], "env_error", "{v}");
    let error = v["error"].as_str().unwrap();
    assert!(error.contains("swegym-test/sweb.eval.x86_64.swegym_s_standin-3") && error.contains("docker load"), "{error}");

    // The sampling stage in the same image: the oracle agent edits /testbed, the patch is
    // `git diff` against base_commit there, and `--evaluate` grades it.
    let one = tmp.path().join("one/SWE-Gym.parquet");
    std::fs::create_dir_all(one.parent().unwrap()).unwrap();
    write_swe_gym_parquet(&one, &repo, &[gold]);
    let rollouts = tmp.path().join("rollouts.parquet");
    run_ok(swegym().args(["sample", "--policy", "oracle", "-k", "1", "-j", "1", "--evaluate", "--backend", "docker"]).arg("--dataset").arg(&one)
        .arg("--env-specs").arg(&specs).arg("--out").arg(&rollouts));
    let rows = read_parquet_with_pyarrow(&rollouts);
    let r = &rows.as_array().unwrap()[0];
    assert_eq!((r["exit_reason"].as_str(), r["status"].as_str(), r["resolved"].as_bool()), (Some("submitted"), Some("resolved"), Some(true)), "{r}");
    let files: Vec<&str> = r["patch"].as_str().unwrap().lines().filter_map(|l| l.strip_prefix("diff --git a/")).collect();
    assert_eq!(files, vec!["calc.py b/calc.py"], "{}", r["patch"]);
    assert!(leftover_containers().is_empty(), "containers left behind: {:?}", leftover_containers());
}
