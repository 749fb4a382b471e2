//! Identifiers: validation of client-supplied ids and generation of the node's own.

use crate::error::{SpearError, SpearResult};

/// The longest id the node accepts.
pub const MAX_ID_LENGTH: usize = 128;

/// Checks a client-supplied task or execution id: 1 to 128 characters of `[A-Za-z0-9._:-]`.
/// `field` names the request field in the error.
pub fn validate_id(field: &str, id: &str) -> SpearResult<()> {
    if id.is_empty() {
        return Err(SpearError::invalid_argument(format!(
            "{field} must not be empty"
        )));
    }
    if id.len() > MAX_ID_LENGTH {
        return Err(SpearError::invalid_argument(format!(
            "{field} is {} characters long; the limit is {MAX_ID_LENGTH}",
            id.len()
        )));
    }
    if let Some(bad) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-')))
    {
        return Err(SpearError::invalid_argument(format!(
            "{field} {id:?} contains {bad:?}; ids may use only letters, digits and . _ : -"
        )));
    }
    Ok(())
}

/// Checks a task name: the same alphabet as ids, so names are safe in URLs and file names.
pub fn validate_task_name(field: &str, name: &str) -> SpearResult<()> {
    validate_id(field, name)
}

/// A fresh random id with a prefix, e.g. `task-3f2a…` (128 random bits, hex).
pub fn random_id(prefix: &str, random_bits: u128) -> String {
    format!("{prefix}-{random_bits:032x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked() {
        let table: &[(&str, bool)] = &[
            ("task-1", true),
            ("a.b_c:d-e", true),
            ("", false),
            ("has space", false),
            ("slash/no", false),
            ("ünicode", false),
        ];
        for (id, ok) in table {
            assert_eq!(validate_id("task_id", id).is_ok(), *ok, "{id:?}");
        }
        let long = "x".repeat(MAX_ID_LENGTH + 1);
        let error = validate_id("task_id", &long).unwrap_err();
        assert!(error.message.contains("task_id"));
    }

    #[test]
    fn random_ids_have_fixed_width() {
        assert_eq!(random_id("exec", 1), format!("exec-{}1", "0".repeat(31)));
    }
}
