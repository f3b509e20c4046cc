//! Reading sctrace's `--events` output: one JSON object per line.

use std::path::Path;

use serde_json::Value;

/// Parses a JSON-lines events file. Blank lines are skipped.
///
/// # Panics
/// If the file cannot be read, or a line is not a JSON object (the message shows the line).
pub fn read_events(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read events file {}: {e}", path.display()));
    parse_events(&text).unwrap_or_else(|e| panic!("events file {}: {e}", path.display()))
}

/// Parses JSON-lines text into objects; the error names the line and quotes it.
pub fn parse_events(text: &str) -> Result<Vec<Value>, String> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| match serde_json::from_str::<Value>(line) {
            Ok(value @ Value::Object(_)) => Ok(value),
            Ok(_) => Err(format!("line {} is JSON but not an object: {line}", i + 1)),
            Err(e) => Err(format!("line {} is not JSON ({e}): {line}", i + 1)),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lines_and_skips_blank_ones() {
        let events = parse_events(
            "{\"syscall\":\"connect\",\"addr\":\"198.18.0.10:80\"}\n\n{\"syscall\":\"bind\"}\n",
        )
        .unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(events[0]["addr"], "198.18.0.10:80");
        assert_eq!(events[1]["syscall"], "bind");
    }

    #[test]
    fn a_bad_line_is_named_and_quoted() {
        let err = parse_events("{\"a\":1}\n{\"truncated\":\n").unwrap_err();
        assert!(err.contains("line 2"), "{err}");
        assert!(err.contains("{\"truncated\":"), "{err}");
    }

    #[test]
    fn a_line_that_is_not_an_object_is_refused() {
        let err = parse_events("[1,2]\n").unwrap_err();
        assert!(err.contains("not an object"), "{err}");
    }

    #[test]
    fn an_empty_file_has_no_events() {
        assert_eq!(parse_events("").unwrap(), Vec::<Value>::new());
    }

    #[test]
    #[should_panic(expected = "line 1 is not JSON")]
    fn read_events_panics_with_the_offending_line() {
        let path = std::env::temp_dir().join(format!("sctt-events-{}.jsonl", std::process::id()));
        std::fs::write(&path, "not json\n").unwrap();
        let result = std::panic::catch_unwind(|| read_events(&path));
        let _ = std::fs::remove_file(&path);
        std::panic::resume_unwind(result.unwrap_err());
    }
}
