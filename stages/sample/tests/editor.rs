//! `str_replace_editor` against a real sandbox, command by command, checked against the
//! outputs and error texts of OpenHands' editor.

mod common;

use std::time::Duration;

use swegym_sample::editor::Editor;
use swegym_sample::{EditorArgs, EditorCommand};
use swegym_sandbox::{ExecRequest, Sandbox};

fn args(command: EditorCommand, path: &str) -> EditorArgs {
    EditorArgs { command, path: path.into(), file_text: None, old_str: None, new_str: None, insert_line: None, view_range: None }
}

async fn run(ed: &mut Editor, sb: &dyn Sandbox, a: EditorArgs) -> String {
    ed.run(sb, &a).await.expect("the sandbox works").text
}

async fn cat(sb: &dyn Sandbox, path: &str) -> String {
    sb.exec(&ExecRequest::new(format!("cat {path}"), Duration::from_secs(10))).await.unwrap().output
}

const P: &str = "/testbed/src/pkg/calc.py";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn view() {
    let f = common::fixture();
    let mut sb = f.sandbox().await;
    let sb_ref = sb.as_ref();
    let mut ed = Editor::new("/testbed", Duration::from_secs(30));
    // A directory: 2 levels, sorted, dirs with '/', hidden entries excluded and counted.
    assert_eq!(
        run(&mut ed, sb_ref, args(EditorCommand::View, "/testbed")).await,
        "Here's the files and directories up to 2 levels deep in /testbed, excluding hidden items:\n/testbed/\n/testbed/blob.bin\n/testbed/src/\n/testbed/src/pkg/\n/testbed/tests/\n/testbed/tests/test_calc.py\n\n2 hidden files/directories in this directory are excluded. You can use 'ls -la /testbed' to see them."
    );
    // A file, whole.
    assert_eq!(
        run(&mut ed, sb_ref, args(EditorCommand::View, P)).await,
        "Here's the result of running `cat -n` on /testbed/src/pkg/calc.py:\n     1\tdef add(a, b):\n     2\t    return a - b\n     3\t\n     4\t\n     5\tdef sub(a, b):\n     6\t    return a - b\n     7\t\n"
    );
    // A range, and -1 for the end.
    let ranged = EditorArgs { view_range: Some(vec![5, -1]), ..args(EditorCommand::View, P) };
    assert_eq!(
        run(&mut ed, sb_ref, ranged).await,
        "Here's the result of running `cat -n` on /testbed/src/pkg/calc.py:\n     5\tdef sub(a, b):\n     6\t    return a - b\n"
    );
    let bad = EditorArgs { view_range: Some(vec![9, 10]), ..args(EditorCommand::View, P) };
    assert_eq!(
        run(&mut ed, sb_ref, bad).await,
        "ERROR:\nInvalid `view_range` parameter: [9, 10]. Its first element `9` should be within the range of lines of the file: [1, 6]."
    );
    let dir_range = EditorArgs { view_range: Some(vec![1, 2]), ..args(EditorCommand::View, "/testbed/src") };
    assert!(run(&mut ed, sb_ref, dir_range).await.contains("The `view_range` parameter is not allowed when `path` points to a directory."));
    // Paths.
    assert_eq!(
        run(&mut ed, sb_ref, args(EditorCommand::View, "src/pkg/calc.py")).await,
        "ERROR:\nInvalid `path` parameter: src/pkg/calc.py. The path should be an absolute path, starting with `/`. Maybe you meant /testbed/src/pkg/calc.py?"
    );
    assert_eq!(
        run(&mut ed, sb_ref, args(EditorCommand::View, "/testbed/nope.py")).await,
        "ERROR:\nInvalid `path` parameter: /testbed/nope.py. The path /testbed/nope.py does not exist. Please provide a valid path."
    );
    assert!(run(&mut ed, sb_ref, args(EditorCommand::View, "/testbed/blob.bin")).await.contains("File appears to be binary"));
    // Files outside /testbed can be read (the venv, the system).
    assert!(run(&mut ed, sb_ref, args(EditorCommand::View, "/etc/hostname")).await.starts_with("Here's the result of running `cat -n` on /etc/hostname:"));
    sb.destroy().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_str_replace_insert_undo() {
    let f = common::fixture();
    let mut sb = f.sandbox().await;
    let sb_ref = sb.as_ref();
    let mut ed = Editor::new("/testbed", Duration::from_secs(30));

    // create: new file (parent dirs made), existing file refused.
    let create = EditorArgs { file_text: Some("x = 1\n".into()), ..args(EditorCommand::Create, "/testbed/new/dir/m.py") };
    assert_eq!(run(&mut ed, sb_ref, create.clone()).await, "File created successfully at: /testbed/new/dir/m.py");
    assert_eq!(cat(sb_ref, "/testbed/new/dir/m.py").await, "x = 1\n");
    assert_eq!(
        run(&mut ed, sb_ref, create).await,
        "ERROR:\nInvalid `path` parameter: /testbed/new/dir/m.py. File already exists at: /testbed/new/dir/m.py. Cannot overwrite files using command `create`."
    );
    let no_text = args(EditorCommand::Create, "/testbed/other.py");
    assert_eq!(run(&mut ed, sb_ref, no_text).await, "ERROR:\nParameter `file_text` is required for command: create.");
    assert!(run(&mut ed, sb_ref, args(EditorCommand::StrReplace, "/testbed/src")).await.contains("is a directory and only the `view` command can be used on directories."));

    // str_replace: not found, not unique (with line numbers), same strings, then unique.
    let sr = |old: &str, new: &str| EditorArgs { old_str: Some(old.into()), new_str: Some(new.into()), ..args(EditorCommand::StrReplace, P) };
    assert_eq!(
        run(&mut ed, sb_ref, sr("return a * b", "x")).await,
        "ERROR:\nNo replacement was performed, old_str `return a * b` did not appear verbatim in /testbed/src/pkg/calc.py."
    );
    assert_eq!(
        run(&mut ed, sb_ref, sr("    return a - b", "    return a + b")).await,
        "ERROR:\nNo replacement was performed. Multiple occurrences of old_str `    return a - b` in lines [2, 6]. Please ensure it is unique."
    );
    assert_eq!(
        run(&mut ed, sb_ref, sr("x", "x")).await,
        "ERROR:\nInvalid `new_str` parameter: x. No replacement was performed. `new_str` and `old_str` must be different."
    );
    assert_eq!(
        run(&mut ed, sb_ref, sr("def add(a, b):\n    return a - b", "def add(a, b):\n    return a + b")).await,
        "The file /testbed/src/pkg/calc.py has been edited. Here's the result of running `cat -n` on a snippet of /testbed/src/pkg/calc.py:\n     1\tdef add(a, b):\n     2\t    return a + b\n     3\t\n     4\t\n     5\tdef sub(a, b):\n     6\t    return a - b\nReview the changes and make sure they are as expected. Edit the file again if necessary."
    );
    assert_eq!(cat(sb_ref, P).await, common::CALC.replacen("a - b", "a + b", 1));

    // insert: after line 0 (top) and at the end; out of range refused.
    let ins = |line: i64, text: &str| EditorArgs { insert_line: Some(line), new_str: Some(text.into()), ..args(EditorCommand::Insert, P) };
    assert_eq!(
        run(&mut ed, sb_ref, ins(7, "x")).await,
        "ERROR:\nInvalid `insert_line` parameter: 7. It should be within the range of allowed values: [0, 6]"
    );
    let out = run(&mut ed, sb_ref, ins(0, "import math")).await;
    assert_eq!(
        out,
        "The file /testbed/src/pkg/calc.py has been edited. Here's the result of running `cat -n` on a snippet of the edited file:\n     1\timport math\n     2\tdef add(a, b):\n     3\t    return a + b\n     4\t\n     5\t\nReview the changes and make sure they are as expected (correct indentation, no duplicate lines, etc). Edit the file again if necessary."
    );
    run(&mut ed, sb_ref, ins(7, "\n\ndef mul(a, b):\n    return a * b")).await;
    assert_eq!(
        cat(sb_ref, P).await,
        format!("import math\n{}\n\ndef mul(a, b):\n    return a * b\n", common::CALC.replacen("a - b", "a + b", 1))
    );

    // undo_edit: back through the insert, the insert, the str_replace; then no history.
    let undo = || args(EditorCommand::UndoEdit, P);
    assert!(run(&mut ed, sb_ref, undo()).await.starts_with("Last edit to /testbed/src/pkg/calc.py undone successfully. Here's the result of running `cat -n` on /testbed/src/pkg/calc.py:\n     1\timport math\n"));
    run(&mut ed, sb_ref, undo()).await;
    run(&mut ed, sb_ref, undo()).await;
    assert_eq!(cat(sb_ref, P).await, common::CALC);
    assert_eq!(run(&mut ed, sb_ref, undo()).await, "ERROR:\nNo edit history found for /testbed/src/pkg/calc.py.");

    // A read-only path is an error observation, not a sandbox failure.
    let ro = EditorArgs { file_text: Some("x".into()), ..args(EditorCommand::Create, "/usr/swegym-test.txt") };
    assert!(run(&mut ed, sb_ref, ro).await.starts_with("ERROR:\nRan into "));
    sb.destroy().await.unwrap();
}
