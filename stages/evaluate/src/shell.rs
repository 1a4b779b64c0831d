//! Quoting of words for the `bash -c` command lines the harness sends into a sandbox.

/// Single-quotes `word` for bash unless it is made only of characters that need none.
pub fn quote(word: &str) -> String {
    let safe = !word.is_empty()
        && word.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '.' | '_' | '-' | ':' | '=' | '+' | ',' | '@'));
    if safe {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::quote;

    #[test]
    fn quoting() {
        let cases = [
            ("tests/test_x.py", "tests/test_x.py"),
            ("a b.py", "'a b.py'"),
            ("it's", r"'it'\''s'"),
            ("", "''"),
            ("$(rm -rf /)", "'$(rm -rf /)'"),
            ("t.py::test[a]", "'t.py::test[a]'"),
        ];
        for (word, want) in cases {
            assert_eq!(quote(word), want);
        }
    }
}
