//! The patch rules on the real SWE-bench Lite rows shipped in `datasets/`: gold patches are
//! not empty and name no test file, test patches name only test files, and the test spec
//! runs the test patch's files.

use std::path::PathBuf;

use swegym_evaluate::patch::{is_empty_patch, is_test_path, split_file_diffs};
use swegym_evaluate::TestSpec;
use swegym_sandbox::EnvSpecs;
use swegym_schema::load_tasks;

#[test]
fn shipped_marshmallow_rows() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../datasets/swebench-lite-marshmallow");
    let load = load_tasks(&dir.join("tasks.jsonl")).expect("datasets/swebench-lite-marshmallow/tasks.jsonl ships with the repo");
    assert!(load.errors.is_empty(), "{:?}", load.errors);
    assert_eq!(load.tasks.len(), 2);
    let mut specs = EnvSpecs::default();
    specs.load_file(&dir.join("environments.toml")).unwrap();
    for task in &load.tasks {
        assert!(!is_empty_patch(&task.patch, &[]), "{}", task.instance_id);
        assert!(is_empty_patch(&task.test_patch, &[]), "{}: the test patch has only test files", task.instance_id);
        for f in split_file_diffs(&task.patch) {
            assert!(!is_test_path(f.path()), "{}: {}", task.instance_id, f.path());
        }
        let env = specs.get(&task.repo, &task.version).expect("an environment for the row");
        let spec = TestSpec::new(task, env, None);
        assert!(!spec.test_directives.is_empty());
        assert!(spec.test_directives.iter().all(|d| d.starts_with("tests/") && d.ends_with(".py")), "{:?}", spec.test_directives);
        assert!(spec.test_command.starts_with(env.test_cmd.trim()));
        assert!(spec.test_command.ends_with(spec.test_directives.last().unwrap()));
    }
}
