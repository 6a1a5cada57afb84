//! `cargo xtask test`: the whole test suite, tier by tier, as CI runs it.
//!
//! 1. lint: `cargo fmt --check` and clippy with `-D warnings`;
//! 2. build: every target of every crate;
//! 3. test: `cargo test --workspace` — unit tests, and the integration tests that use the real
//!    servers `deps` made sure of (Postgres, MariaDB; etcd is started by the tests).
//!
//! A failing lint does not stop the later tiers (their results are worth seeing); a failing
//! build does. The exit status is non-zero if any tier failed.

use std::process::ExitCode;

use crate::{cmd, deps};

/// One tier: a name, what it shows, and the cargo commands it runs.
struct Tier {
    name: &'static str,
    what: &'static str,
    commands: &'static [&'static [&'static str]],
}

const TIERS: &[Tier] = &[
    Tier {
        name: "lint",
        what: "formatting and clippy, warnings are errors",
        commands: &[
            &["fmt", "--all", "--", "--check"],
            &[
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ],
        ],
    },
    Tier {
        name: "build",
        what: "every target of every crate",
        commands: &[&["build", "--workspace", "--all-targets"]],
    },
    Tier {
        name: "test",
        what: "unit and integration tests (real SQLite, Postgres, MariaDB, etcd, etcdctl)",
        commands: &[&["test", "--workspace", "--no-fail-fast"]],
    },
];

#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Passed,
    Failed(String),
    Skipped(&'static str),
}

pub(crate) fn run() -> anyhow::Result<ExitCode> {
    deps::ensure()?;
    let mut outcomes: Vec<(&str, Outcome)> = Vec::new();
    for (i, tier) in TIERS.iter().enumerate() {
        let build_failed = outcomes
            .iter()
            .any(|(name, outcome)| *name == "build" && matches!(outcome, Outcome::Failed(_)));
        if tier.name == "test" && build_failed {
            outcomes.push((tier.name, Outcome::Skipped("the build failed")));
            continue;
        }
        println!(
            "\n==== tier {}/{}: {} — {}",
            i + 1,
            TIERS.len(),
            tier.name,
            tier.what
        );
        let mut outcome = Outcome::Passed;
        for args in tier.commands {
            let mut command = cmd::cargo();
            command.args(*args);
            // The apiserver's Python client tests run this interpreter (see `deps`).
            command.env("RK3S_PYTHON", deps::python_client());
            let status = cmd::status(&mut command)?;
            if !status.success() && outcome == Outcome::Passed {
                outcome = Outcome::Failed(format!("`{}` {status}", cmd::display(&command)));
            }
        }
        outcomes.push((tier.name, outcome));
    }

    println!("\n==== summary");
    let mut failed = false;
    for (name, outcome) in &outcomes {
        match outcome {
            Outcome::Passed => println!("{name:<6} ok"),
            Outcome::Failed(why) => {
                failed = true;
                println!("{name:<6} FAILED: {why}");
            }
            Outcome::Skipped(why) => {
                failed = true;
                println!("{name:<6} skipped: {why}");
            }
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiers_run_lint_then_build_then_test() {
        let names: Vec<&str> = TIERS.iter().map(|t| t.name).collect();
        assert_eq!(names, ["lint", "build", "test"]);
    }
}
