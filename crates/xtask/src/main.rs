//! `cargo xtask`: the developer commands of the rk3s workspace.
//!
//! A plain binary with one dependency (`anyhow`), run through the alias in
//! `.cargo/config.toml`. It never depends on an rk3s crate, so it builds even when they do not.
//!
//! - `cargo xtask deps`: installs what the tests need (Debian packages, idempotently) and makes
//!   sure the machine's Postgres and MariaDB answer.
//! - `cargo xtask test`: `deps`, then every test tier (lint, build, tests). `.ci/run` runs it.
//! - `cargo xtask bench <name> [args...]`: runs a benchmark.
//! - `cargo xtask dist`: the `rk3s` binary in the `dist` profile (LTO, stripped), and its size.
//! - `cargo xtask codegen`: regenerates the apiserver's table of Kubernetes protobuf messages.

mod bench;
mod cmd;
mod codegen;
mod deps;
mod dist;
mod flags;
mod startup;
mod suite;
#[cfg(test)]
mod tidy;

use std::path::PathBuf;
use std::process::ExitCode;

use flags::{Command, USAGE};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = match flags::parse(&args) {
        Ok(command) => command,
        Err(err) => {
            eprintln!("error: {err}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(command) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> anyhow::Result<ExitCode> {
    let root = workspace_root();
    std::env::set_current_dir(&root)
        .map_err(|e| anyhow::anyhow!("cannot enter the workspace root {}: {e}", root.display()))?;
    match command {
        Command::Help => {
            println!("{USAGE}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Deps => {
            deps::ensure()?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Test => suite::run(),
        Command::Codegen => {
            codegen::run()?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench { name, args } => bench::run(name.as_deref(), &args),
        Command::Dist => {
            dist::run()?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The workspace root: two levels above this crate's manifest (`crates/xtask`).
fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest
        .ancestors()
        .nth(2)
        .map(PathBuf::from)
        .unwrap_or(manifest)
}
