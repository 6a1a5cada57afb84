//! The query options of writes, checked before anything else happens, as upstream's
//! `ValidateCreateOptions`, `ValidateUpdateOptions`, `ValidatePatchOptions` and the `dryRun`
//! part of `ValidateDeleteOptions`: a 422 `Invalid` of `CreateOptions.meta.k8s.io` (and so on)
//! naming each bad parameter. A misspelt `dryRun` must never turn into a real write.

use crate::status::{ApiError, Cause};
use crate::validation::{field_manager, go_strings, not_supported, q};

use super::Query;

/// The `dryRun` values upstream knows.
const DRY_RUN_VALUES: &[&str] = &["All"];

/// The `fieldValidation` values upstream knows (empty means the default, `Warn`).
const FIELD_VALIDATION_VALUES: &[&str] = &["", "Ignore", "Strict", "Warn"];

/// Which write's options these are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Write {
    Create,
    Update,
    /// `apply` is whether the patch is a server-side apply.
    Patch {
        apply: bool,
    },
    Delete,
}

impl Write {
    fn kind(self) -> &'static str {
        match self {
            Write::Create => "CreateOptions",
            Write::Update => "UpdateOptions",
            Write::Patch { .. } => "PatchOptions",
            Write::Delete => "DeleteOptions",
        }
    }
}

/// Checks the options of a write in `query`.
pub(crate) fn validate(write: Write, query: &Query) -> Result<(), ApiError> {
    let mut causes = Vec::new();
    let manager = query.get("fieldManager").map_or("", String::as_str);
    if let Write::Patch { apply } = write {
        if !apply && query.contains_key("force") {
            causes.push(Cause {
                reason: "FieldValueForbidden",
                message: "Forbidden: may not be specified for non-apply patch".into(),
                field: "force".into(),
            });
        }
        if apply && manager.is_empty() {
            causes.push(Cause {
                reason: "FieldValueRequired",
                message: "Required value: is required for apply patch".into(),
                field: "fieldManager".into(),
            });
        }
    }
    if write != Write::Delete {
        causes.extend(field_manager(manager, "fieldManager"));
    }
    if let Some(dry_run) = query.get("dryRun") {
        causes.extend(dry_run_values(std::slice::from_ref(dry_run)));
    }
    if write != Write::Delete
        && let Some(v) = query.get("fieldValidation")
        && !FIELD_VALIDATION_VALUES.contains(&v.as_str())
    {
        causes.push(not_supported(
            "fieldValidation",
            &q(v),
            FIELD_VALIDATION_VALUES,
        ));
    }
    if causes.is_empty() {
        Ok(())
    } else {
        Err(invalid_options(write, causes))
    }
}

/// The 422 of invalid options of `write`.
pub(crate) fn invalid_options(write: Write, causes: Vec<Cause>) -> ApiError {
    ApiError::invalid_of("meta.k8s.io", write.kind(), "", causes)
}

/// Upstream's `ValidateDryRun`: every value must be `All`.
pub(crate) fn dry_run_values(values: &[String]) -> Option<Cause> {
    if values.iter().all(|v| DRY_RUN_VALUES.contains(&v.as_str())) {
        return None;
    }
    Some(not_supported("dryRun", &go_strings(values), DRY_RUN_VALUES))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(pairs: &[(&str, &str)]) -> Query {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect()
    }

    fn message(r: Result<(), ApiError>) -> String {
        r.expect_err("invalid").message
    }

    #[test]
    fn good_options_pass() {
        for write in [
            Write::Create,
            Write::Update,
            Write::Patch { apply: false },
            Write::Delete,
        ] {
            validate(
                write,
                &query(&[("dryRun", "All"), ("fieldValidation", "Strict")]),
            )
            .expect("valid");
            validate(write, &query(&[])).expect("valid");
        }
        validate(
            Write::Patch { apply: true },
            &query(&[("fieldManager", "kubectl"), ("force", "true")]),
        )
        .expect("valid");
    }

    #[test]
    fn a_misspelt_dry_run_is_refused() {
        assert_eq!(
            message(validate(Write::Create, &query(&[("dryRun", "true")]))),
            "CreateOptions.meta.k8s.io \"\" is invalid: dryRun: Unsupported value: \
             []string{\"true\"}: supported values: \"All\""
        );
        assert_eq!(
            message(validate(Write::Delete, &query(&[("dryRun", "server")]))),
            "DeleteOptions.meta.k8s.io \"\" is invalid: dryRun: Unsupported value: \
             []string{\"server\"}: supported values: \"All\""
        );
    }

    #[test]
    fn field_manager_and_validation() {
        let long = "m".repeat(129);
        let e = validate(Write::Update, &query(&[("fieldManager", &long)])).expect_err("long");
        assert_eq!(
            e.message,
            "UpdateOptions.meta.k8s.io \"\" is invalid: fieldManager: Too long: may not be \
             more than 128 bytes"
        );
        assert_eq!(e.details.expect("details")["kind"], "UpdateOptions");
        assert_eq!(
            message(validate(
                Write::Create,
                &query(&[("fieldManager", "a\u{1}b")])
            )),
            "CreateOptions.meta.k8s.io \"\" is invalid: fieldManager: Invalid value: \
             \"a\\x01b\": invalid character U+0001 (at position 1)"
        );
        assert_eq!(
            message(validate(
                Write::Patch { apply: false },
                &query(&[("fieldValidation", "Loose"), ("force", "true")])
            )),
            "PatchOptions.meta.k8s.io \"\" is invalid: [force: Forbidden: may not be specified \
             for non-apply patch, fieldValidation: Unsupported value: \"Loose\": supported \
             values: \"\", \"Ignore\", \"Strict\", \"Warn\"]"
        );
        assert_eq!(
            message(validate(Write::Patch { apply: true }, &query(&[]))),
            "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is \
             required for apply patch"
        );
    }
}
