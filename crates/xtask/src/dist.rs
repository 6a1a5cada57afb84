//! `cargo xtask dist`: the supervisor binary `rk3s` in the `dist` profile of the workspace
//! manifest (fat LTO, one codegen unit, stripped, panics unwind), and its size.
//!
//! The binary's path comes from cargo's own JSON messages (`--message-format
//! json-render-diagnostics`: the `executable` of the `rk3s` artifact), so `CARGO_TARGET_DIR` and
//! `build.target-dir` are honoured without this crate knowing about them.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail};

use crate::cmd;

/// The package and binary that `dist` builds.
pub(crate) const PACKAGE: &str = "rk3s";
pub(crate) const BINARY: &str = "rk3s";
/// The profile in the workspace `Cargo.toml`.
pub(crate) const PROFILE: &str = "dist";

pub(crate) fn run() -> anyhow::Result<()> {
    let binary = build(PROFILE)?;
    let size = std::fs::metadata(&binary)
        .with_context(|| format!("cannot stat {}", binary.display()))?
        .len();
    println!("{}", binary.display());
    println!("size: {} ({size} bytes)", mib(size));
    Ok(())
}

/// Builds `-p rk3s` in `profile` and returns the path of the `rk3s` executable.
pub(crate) fn build(profile: &str) -> anyhow::Result<PathBuf> {
    let mut command = cmd::cargo();
    command
        .args(["build", "-p", PACKAGE, "--bin", BINARY])
        .args(["--profile", profile])
        .args(["--message-format", "json-render-diagnostics"])
        .stdout(Stdio::piped());
    let line = cmd::display(&command);
    println!("$ {line}");
    let out = command
        .spawn()
        .and_then(|child| child.wait_with_output())
        .with_context(|| format!("cannot run `{line}`"))?;
    if !out.status.success() {
        bail!("`{line}` failed ({})", out.status);
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .lines()
        .filter_map(executable_of)
        .find(|path| path.file_name().is_some_and(|n| n == BINARY))
        .with_context(|| format!("`{line}` reported no `{BINARY}` executable"))
}

/// The path of an existing build of `rk3s` in `profile`, next to the one cargo would build in
/// `other` (for example the dist binary next to a release one), if it is there.
pub(crate) fn sibling_build(built: &Path, profile: &str) -> Option<PathBuf> {
    let dir = built.parent()?.parent()?;
    let path = dir.join(profile).join(BINARY);
    path.is_file().then_some(path)
}

/// The `"executable"` of one cargo JSON message, if it has a non-null one.
fn executable_of(message: &str) -> Option<PathBuf> {
    if !message.contains("\"reason\":\"compiler-artifact\"") {
        return None;
    }
    let start = message.find("\"executable\":\"")? + "\"executable\":\"".len();
    let mut path = String::new();
    let mut chars = message[start..].chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => return Some(PathBuf::from(path)),
            '\\' => match chars.next()? {
                'n' => path.push('\n'),
                't' => path.push('\t'),
                other => path.push(other),
            },
            c => path.push(c),
        }
    }
    None
}

/// `12.3 MiB`.
pub(crate) fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// Whether `strip` left no symbol table in `binary` (`None` when `file(1)` is missing).
pub(crate) fn is_stripped(binary: &Path) -> Option<bool> {
    let out = Command::new("file").arg(binary).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    Some(text.contains(", stripped"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_executable_in_cargo_messages() {
        let artifact = r#"{"reason":"compiler-artifact","package_id":"path+file:///w/crates/supervisor#rk3s@0.1.0","target":{"kind":["bin"],"name":"rk3s"},"filenames":["/t/dist/rk3s"],"executable":"/t/dist/rk3s","fresh":true}"#;
        assert_eq!(executable_of(artifact), Some(PathBuf::from("/t/dist/rk3s")));
        let lib = r#"{"reason":"compiler-artifact","target":{"kind":["lib"]},"executable":null,"fresh":true}"#;
        assert_eq!(executable_of(lib), None);
        let done = r#"{"reason":"build-finished","success":true}"#;
        assert_eq!(executable_of(done), None);
        let escaped = r#"{"reason":"compiler-artifact","executable":"/a \"b\"/rk3s"}"#;
        assert_eq!(executable_of(escaped), Some(PathBuf::from("/a \"b\"/rk3s")));
    }

    #[test]
    fn sizes_in_mib() {
        assert_eq!(mib(0), "0.0 MiB");
        assert_eq!(mib(3 * 1024 * 1024 + 512 * 1024), "3.5 MiB");
    }

    #[test]
    fn dist_profile_is_declared_as_documented() {
        let manifest = std::fs::read_to_string(crate::workspace_root().join("Cargo.toml"))
            .expect("workspace manifest");
        let section: String = manifest
            .split("[profile.dist]")
            .nth(1)
            .expect("a [profile.dist] section")
            .lines()
            .take_while(|l| !l.starts_with('['))
            .collect::<Vec<_>>()
            .join("\n");
        for setting in [
            "inherits = \"release\"",
            "lto = \"fat\"",
            "codegen-units = 1",
            "strip = true",
        ] {
            assert!(section.contains(setting), "[profile.dist] lacks {setting}");
        }
    }
}
