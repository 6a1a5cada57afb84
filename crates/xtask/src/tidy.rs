//! Tidy checks: facts about the repository that the docs and CI rely on, checked by
//! `cargo test` like any other test. No network, no build.

use std::path::{Path, PathBuf};

use crate::bench::{BENCHES, Target};

fn root() -> PathBuf {
    crate::workspace_root()
}

fn read(path: impl AsRef<Path>) -> String {
    let path = root().join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// The crate folders under `crates/`.
fn crate_dirs() -> Vec<String> {
    let mut dirs: Vec<String> = std::fs::read_dir(root().join("crates"))
        .expect("list crates/")
        .map(|e| e.expect("crates/ entry"))
        .filter(|e| e.path().join("Cargo.toml").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    dirs.sort();
    dirs
}

#[test]
fn ci_runs_the_readme_test_command() {
    let ci = read(".ci/run");
    let readme = read("README.md");
    let command = "cargo xtask test";
    assert!(
        ci.lines()
            .any(|l| l.trim() == command || l.trim().starts_with("exec cargo xtask test")),
        ".ci/run must run `{command}`"
    );
    assert!(
        readme.contains(command),
        "README.md must give `{command}` as the test command"
    );
}

#[test]
fn ci_script_is_executable() {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(root().join(".ci/run"))
        .expect("stat .ci/run")
        .permissions()
        .mode();
    assert!(
        mode & 0o111 != 0,
        ".ci/run must be executable (mode {mode:o})"
    );
}

#[test]
fn every_crate_has_a_section_in_architecture_md() {
    let doc = read("ARCHITECTURE.md");
    for dir in crate_dirs() {
        let heading = format!("### `crates/{dir}`");
        assert!(
            doc.contains(&heading),
            "ARCHITECTURE.md has no `{heading}` section"
        );
    }
}

#[test]
fn every_crate_is_a_workspace_member() {
    let manifest = read("Cargo.toml");
    for dir in crate_dirs() {
        assert!(
            manifest.contains(&format!("\"crates/{dir}\"")),
            "crates/{dir} is not a member"
        );
    }
}

#[test]
fn xtask_depends_on_nothing_in_tree() {
    let manifest = read("crates/xtask/Cargo.toml");
    let mut in_deps = false;
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            in_deps = line.contains("dependencies");
        } else if in_deps && !line.is_empty() && !line.starts_with('#') {
            assert!(
                !line.starts_with("rk3s") && !line.contains("path ="),
                "xtask must build without the rest of the workspace: {line}"
            );
        }
    }
}

#[test]
fn available_benches_exist() {
    for bench in BENCHES {
        if let Target::Cargo {
            package,
            bench: target,
        } = bench.target
        {
            let dir = package.strip_prefix("rk3s-").unwrap_or(package);
            let file = root()
                .join("crates")
                .join(dir)
                .join("benches")
                .join(format!("{target}.rs"));
            assert!(
                file.is_file(),
                "bench {} is listed as available but {} is missing",
                bench.name,
                file.display()
            );
            let manifest = read(format!("crates/{dir}/Cargo.toml"));
            assert!(
                manifest.contains(&format!("name = \"{target}\"")),
                "crates/{dir}/Cargo.toml declares no [[bench]] {target}"
            );
        }
    }
}
