//! What the agent reads: the system prompt (role + the three tools in OpenHands' in-context
//! function-calling form), the task prompt (OpenHands' "uploaded_files / pr_description"
//! instruction), observations (`EXECUTION RESULT of [NAME]:` user messages, head + tail
//! truncated), and the character-based token estimate used when a policy has no tokenizer.
//!
//! Two scaffolds ([`Scaffold`]): `openhands`, the prompts above (~1.4k tokens before the
//! task), and `compact`, for small models: a ~660-character system prompt with one worked call,
//! the same three tools and the same `<function=…>` call format (so SFT data stays in the
//! OpenHands function-call form), and a task prompt that is the issue and one instruction.

use swegym_schema::{Message, Task};
use swegym_sandbox::TESTBED;

/// Which prompts an agent gets; see the module documentation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scaffold {
    /// OpenHands' CodeAct prompts (the SWE-Gym setting).
    #[default]
    OpenHands,
    /// Short prompts a 135M-parameter model can follow.
    Compact,
}

impl Scaffold {
    pub fn as_str(self) -> &'static str {
        match self {
            Scaffold::OpenHands => "openhands",
            Scaffold::Compact => "compact",
        }
    }

    pub fn parse(name: &str) -> Option<Scaffold> {
        [Scaffold::OpenHands, Scaffold::Compact].into_iter().find(|s| s.as_str() == name)
    }
}

/// The compact scaffold's system message: the tools in one line each and one worked call.
const COMPACT_SYSTEM: &str = "You fix bugs in the Python repository at /testbed. Each reply is exactly one function call:
<function=NAME>
<parameter=NAME>VALUE</parameter>
</function>
Functions:
- str_replace_editor: command=view, path, view_range=[start, end] shows lines; command=str_replace, path, old_str, new_str replaces the text old_str (unique in the file) by new_str.
- execute_bash: command runs a shell command.
- finish: call it when the bug is fixed.
Example:
<function=str_replace_editor>
<parameter=command>str_replace</parameter>
<parameter=path>/testbed/pkg/util.py</parameter>
<parameter=old_str>return totla</parameter>
<parameter=new_str>return total</parameter>
</function>
";

/// The agent's role (the CodeAct system message, shortened).
const ROLE: &str = "You are a helpful AI assistant that can interact with a computer to solve tasks.
<IMPORTANT>
* If the user asks a question, like \"why is X happening\", don't try to fix the problem. Just give an answer to the question.
* When editing files, be precise: make minimal, targeted changes, and check your edits.
* Work in the repository; do not try to reach the network.
</IMPORTANT>
";

/// The tools, described as OpenHands' converter lists them (name, description, parameters).
fn tool_descriptions() -> String {
    let tools: [(&str, &str, serde_json::Value); 3] = [
        (
            "execute_bash",
            "Execute a bash command in the terminal.
* Long running commands: for commands that may run indefinitely, run them in the background and redirect output to a file, e.g. `python3 app.py > server.log 2>&1 &`.
* Each command runs in a fresh shell; the working directory carries over between calls (a `cd` persists), environment variables do not.
* A command that runs longer than the time limit is killed.
",
            serde_json::json!({
                "type": "object",
                "properties": {
                    "command": {"type": "string", "description": "The bash command to execute. Can be empty to view additional logs when previous exit code is `-1`. Can be `ctrl+c` to interrupt the currently running process."}
                },
                "required": ["command"]
            }),
        ),
        (
            "finish",
            "Finish the interaction when the task is complete OR if the assistant cannot proceed further with the task.",
            serde_json::json!({
                "type": "object",
                "properties": {
                    "message": {"type": "string", "description": "A short summary of what was done."}
                },
                "required": []
            }),
        ),
        (
            "str_replace_editor",
            "Custom editing tool for viewing, creating and editing files
* State is persistent across command calls and discussions with the user
* If `path` is a file, `view` displays the result of applying `cat -n`. If `path` is a directory, `view` lists non-hidden files and directories up to 2 levels deep
* The `create` command cannot be used if the specified `path` already exists as a file
* If a `command` generates a long output, it will be truncated and marked with `<response clipped>`
* The `undo_edit` command will revert the last edit made to the file at `path`

Notes for using the `str_replace` command:
* The `old_str` parameter should match EXACTLY one or more consecutive lines from the original file. Be mindful of whitespaces!
* If the `old_str` parameter is not unique in the file, the replacement will not be performed. Make sure to include enough context in `old_str` to make it unique
* The `new_str` parameter should contain the edited lines that should replace the `old_str`
",
            serde_json::json!({
                "type": "object",
                "properties": {
                    "command": {"description": "The commands to run. Allowed options are: `view`, `create`, `str_replace`, `insert`, `undo_edit`.", "enum": ["view", "create", "str_replace", "insert", "undo_edit"], "type": "string"},
                    "path": {"description": "Absolute path to file or directory, e.g. `/testbed/file.py` or `/testbed`.", "type": "string"},
                    "file_text": {"description": "Required parameter of `create` command, with the content of the file to be created.", "type": "string"},
                    "old_str": {"description": "Required parameter of `str_replace` command containing the string in `path` to replace.", "type": "string"},
                    "new_str": {"description": "Optional parameter of `str_replace` command containing the new string (if not given, no string will be added). Required parameter of `insert` command containing the string to insert.", "type": "string"},
                    "insert_line": {"description": "Required parameter of `insert` command. The `new_str` will be inserted AFTER the line `insert_line` of `path`.", "type": "integer"},
                    "view_range": {"description": "Optional parameter of `view` command when `path` points to a file. If none is given, the full file is shown. If provided, the file will be shown in the indicated line number range, e.g. [11, 12] will show lines 11 and 12. Indexing at 1 to start. Setting `[start_line, -1]` shows all lines from `start_line` to the end of the file.", "items": {"type": "integer"}, "type": "array"}
                },
                "required": ["command", "path"]
            }),
        ),
    ];
    let mut out = String::new();
    for (i, (name, description, parameters)) in tools.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str(&format!("---- BEGIN FUNCTION #{}: {name} ----\n", i + 1));
        out.push_str(&format!("Description: {description}\n"));
        out.push_str(&format!("Parameters: {}\n", serde_json::to_string_pretty(parameters).expect("static JSON")));
        out.push_str(&format!("---- END FUNCTION #{} ----\n", i + 1));
    }
    out
}

/// The system message: the role, then the tools and the call format.
pub fn system_prompt() -> String {
    format!(
        "{ROLE}
You have access to the following functions:

{tools}
If you choose to call a function ONLY reply in the following format with NO suffix:

<function=example_function_name>
<parameter=example_parameter_1>value_1</parameter>
<parameter=example_parameter_2>
This is the value for the second parameter
that can span
multiple lines
</parameter>
</function>

<IMPORTANT>
Reminder:
- Function calls MUST follow the specified format, start with <function= and end with </function>
- Required parameters MUST be specified
- Only call one function at a time
- You may provide optional reasoning for your function call in natural language BEFORE the function call, but NOT after.
- If there is no function call available, answer the question like normal with your current knowledge and do not tell the user about function calls
</IMPORTANT>
",
        tools = tool_descriptions()
    )
}

/// The task message (OpenHands' SWE-bench instruction, with the repository at /testbed).
pub fn task_prompt(task: &Task) -> String {
    format!(
        "<uploaded_files>
{TESTBED}
</uploaded_files>
I've uploaded a python code repository in the directory {TESTBED}. Consider the following PR description:

<pr_description>
{problem}
</pr_description>

Can you help me implement the necessary changes to the repository so that the requirements specified in the <pr_description> are met?
I've already taken care of all changes to any of the test files described in the <pr_description>. This means you DON'T have to modify the testing logic or any of the tests in any way!
Your task is to make the minimal changes to non-tests files in the {TESTBED} directory to ensure the <pr_description> is satisfied.
Follow these steps to resolve the issue:
1. As a first step, it might be a good idea to explore the repo to familiarize yourself with its structure.
2. Create a script to reproduce the error and execute it with `python <filename.py>` using the execute_bash tool, to confirm the error.
3. Edit the source code of the repo to resolve the issue.
4. Rerun your reproduce script and confirm that the error is fixed!
5. Think about edge cases and make sure your fix handles them as well.
When you are done, call the finish function.
",
        problem = task.problem_statement.trim_end()
    )
}

/// The compact scaffold's task message: the issue and one instruction.
pub fn compact_task_prompt(task: &Task) -> String {
    format!(
        "<issue>\n{problem}\n</issue>\nFix the bug in the library code under {TESTBED} (not the tests) with the smallest edit, then call finish.\n",
        problem = task.problem_statement.trim_end()
    )
}

/// The first two messages of every rollout.
pub fn initial_messages(task: &Task, scaffold: Scaffold) -> Vec<Message> {
    match scaffold {
        Scaffold::OpenHands => vec![Message::system(system_prompt()), Message::user(task_prompt(task))],
        Scaffold::Compact => vec![Message::system(COMPACT_SYSTEM), Message::user(compact_task_prompt(task))],
    }
}

/// The user message carrying a tool's output.
pub fn observation_message(tool: &str, content: &str, max_chars: usize) -> Message {
    Message::user(format!("EXECUTION RESULT of [{tool}]:\n{}", truncate_middle(content, max_chars)))
}

/// The user message after a reply with no usable call.
pub fn format_error_message(error: &str) -> Message {
    Message::user(format!(
        "ERROR: your last reply did not contain a valid function call: {error}.\n\
         Reply with exactly one function call in the format <function=NAME>\n<parameter=NAME>VALUE</parameter>\n</function>, \
         using execute_bash, str_replace_editor or finish. If the task is done, call finish."
    ))
}

/// The marker put where the middle of a long observation was cut (OpenHands' wording).
pub const TRUNCATION_MARKER: &str = "\n[... Observation truncated due to length ...]\n";

/// Keeps the first and last halves of `text` (in chars) when it is longer than `max_chars`.
pub fn truncate_middle(text: &str, max_chars: usize) -> String {
    let n = text.chars().count();
    if n <= max_chars {
        return text.to_string();
    }
    let half = max_chars / 2;
    let head: String = text.chars().take(half).collect();
    let tail: String = text.chars().skip(n - half).collect();
    format!("{head}{TRUNCATION_MARKER}{tail}")
}

/// Token estimate when the policy has no tokenizer: ~4 characters per token plus a few
/// tokens of chat-template framing per message (rounded up, so the estimate errs high for
/// English and code).
pub fn estimate_tokens(messages: &[Message]) -> usize {
    messages.iter().map(|m| m.content.chars().count().div_ceil(4) + 4).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_keeps_head_and_tail() {
        assert_eq!(truncate_middle("abcdef", 6), "abcdef");
        assert_eq!(truncate_middle("abcdefgh", 4), format!("ab{TRUNCATION_MARKER}gh"));
        // Multi-byte characters are cut on char boundaries.
        assert_eq!(truncate_middle("ééééé", 2), format!("é{TRUNCATION_MARKER}é"));
        let m = observation_message("execute_bash", &"x".repeat(100), 10);
        assert_eq!(m.content, format!("EXECUTION RESULT of [execute_bash]:\nxxxxx{TRUNCATION_MARKER}xxxxx"));
    }

    #[test]
    fn system_prompt_lists_the_tools_in_order() {
        let s = system_prompt();
        let a = s.find("---- BEGIN FUNCTION #1: execute_bash ----").unwrap();
        let b = s.find("---- BEGIN FUNCTION #2: finish ----").unwrap();
        let c = s.find("---- BEGIN FUNCTION #3: str_replace_editor ----").unwrap();
        assert!(a < b && b < c);
        assert!(s.contains("\"enum\": [") && s.contains("\"undo_edit\"") && s.contains("\"required\": [\n    \"command\",\n    \"path\"\n  ]"));
    }

    #[test]
    fn the_compact_scaffold_is_short_and_uses_the_same_call_format() {
        let task: Task = serde_json::from_value(serde_json::json!({
            "instance_id": "o__r-1", "repo": "o/r", "base_commit": "abc", "version": "1.0", "patch": "", "test_patch": "",
            "problem_statement": "`f` raises `NameError`\n", "FAIL_TO_PASS": ["t.py::a"], "PASS_TO_PASS": [],
        }))
        .unwrap();
        let compact = initial_messages(&task, Scaffold::Compact);
        let full = initial_messages(&task, Scaffold::OpenHands);
        assert!(estimate_tokens(&compact) * 5 < estimate_tokens(&full), "{} vs {}", estimate_tokens(&compact), estimate_tokens(&full));
        assert!(compact[1].content.contains("`f` raises `NameError`"));
        // The worked example is a call the parser accepts.
        let example = &COMPACT_SYSTEM[COMPACT_SYSTEM.find("Example:\n").unwrap() + 9..];
        assert!(crate::action::parse_action(example).is_ok(), "{example}");
        assert_eq!(Scaffold::parse("compact"), Some(Scaffold::Compact));
        assert_eq!(Scaffold::default(), Scaffold::OpenHands);
    }

    #[test]
    fn token_estimate() {
        assert_eq!(estimate_tokens(&[Message::user("abcd"), Message::assistant("abcde")]), (1 + 4) + (2 + 4));
    }
}
