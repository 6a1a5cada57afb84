//! The systemd units pass `systemd-analyze verify` (Debian package `systemd`, which
//! `cargo xtask deps` installs), with no warning at all.
//!
//! verify checks every directive and value, the dependencies between the units, and that each
//! `ExecStart=` program exists and is executable. The units name `/usr/local/bin/<binary>`,
//! which a test must not install into; so the test copies the units into a temp dir with that
//! prefix replaced by a temp `bin/` holding an executable of each name (the rest of every line
//! untouched), and verifies the copies. That the names are binaries of this workspace is checked
//! against the crates' manifests; that the flags are theirs, by `crates/tests` with the built
//! binaries (`tests/components.rs`).

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use rk3s_deploy::{BIN_DIR, SYSTEMD_UNITS, Unit};

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("workspace root")
        .to_path_buf()
}

/// `name = "..."` of every `[[bin]]` in `crates/*/Cargo.toml`.
fn workspace_binaries() -> Vec<String> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(workspace_root().join("crates")).expect("crates/") {
        let manifest = entry.expect("entry").path().join("Cargo.toml");
        let Ok(text) = std::fs::read_to_string(&manifest) else {
            continue;
        };
        let mut in_bin = false;
        for line in text.lines().map(str::trim) {
            if line.starts_with('[') {
                in_bin = line == "[[bin]]";
            } else if in_bin && let Some(v) = line.strip_prefix("name = ") {
                names.push(v.trim_matches('"').to_string());
            }
        }
    }
    names
}

fn programs() -> Vec<(&'static str, &'static str)> {
    SYSTEMD_UNITS
        .iter()
        .filter_map(|u| {
            let argv = u.exec_start()?;
            let program = argv.first()?.strip_prefix(BIN_DIR)?.strip_prefix('/')?;
            Some((u.name, program))
        })
        .collect()
}

#[test]
fn every_service_runs_a_workspace_binary_from_usr_local_bin() {
    let binaries = workspace_binaries();
    let services: Vec<&Unit> = SYSTEMD_UNITS
        .iter()
        .filter(|u| u.name.ends_with(".service"))
        .collect();
    assert_eq!(services.len(), 5);
    let programs = programs();
    assert_eq!(
        programs.len(),
        services.len(),
        "every service's ExecStart is a program in {BIN_DIR}: {programs:?}"
    );
    for (unit, program) in programs {
        assert!(
            binaries.iter().any(|b| b == program),
            "{unit} runs {program}, which no crate builds ({binaries:?})"
        );
    }
}

#[test]
fn units_reference_only_units_that_exist() {
    let names: Vec<&str> = SYSTEMD_UNITS.iter().map(|u| u.name).collect();
    for unit in SYSTEMD_UNITS {
        for key in [
            "Wants",
            "Requires",
            "After",
            "Before",
            "PartOf",
            "Conflicts",
            "WantedBy",
        ] {
            for value in unit.values(key) {
                for referenced in value.split_whitespace().filter(|r| r.starts_with("rk3s")) {
                    assert!(
                        names.contains(&referenced),
                        "{}: {key}={referenced} is not one of our units",
                        unit.name
                    );
                }
            }
        }
    }
}

#[test]
fn the_target_groups_every_component_and_conflicts_with_the_server() {
    let unit = |name: &str| {
        SYSTEMD_UNITS
            .iter()
            .find(|u| u.name == name)
            .expect("unit exists")
    };
    let target = unit("rk3s-control-plane.target");
    let wanted: Vec<&str> = target
        .values("Wants")
        .iter()
        .flat_map(|v| v.split_whitespace())
        .collect();
    for component in ["datastore", "apiserver", "scheduler", "controller"] {
        let name = format!("rk3s-{component}.service");
        assert!(wanted.contains(&name.as_str()), "target wants {name}");
        let service = unit(&name);
        assert_eq!(service.values("PartOf"), ["rk3s-control-plane.target"]);
        assert_eq!(service.values("WantedBy"), ["rk3s-control-plane.target"]);
    }
    assert_eq!(target.values("Conflicts"), ["rk3s.service"]);
    assert_eq!(
        unit("rk3s.service").values("Conflicts"),
        ["rk3s-control-plane.target"]
    );
}

#[test]
fn units_pass_systemd_analyze_verify() {
    let analyze = ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("systemd-analyze is installed (Debian package systemd; `cargo xtask deps`)");
    let dir = tempfile::tempdir().expect("temp dir");
    let bin = dir.path().join("bin");
    let units = dir.path().join("units");
    std::fs::create_dir_all(&bin).expect("bin dir");
    std::fs::create_dir_all(&units).expect("units dir");
    for (_, program) in programs() {
        let path = bin.join(program);
        std::fs::write(&path, "#!/bin/sh\nexit 0\n").expect("stand-in written");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    let mut files = Vec::new();
    for unit in SYSTEMD_UNITS {
        let contents = unit
            .contents
            .replace(&format!("{BIN_DIR}/"), &format!("{}/", bin.display()));
        let path = units.join(unit.name);
        std::fs::write(&path, contents).expect("unit copied");
        files.push(path);
    }
    let out = Command::new(analyze)
        .arg("verify")
        .args(&files)
        .output()
        .expect("systemd-analyze runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "systemd-analyze verify failed ({}):\n{stderr}{stdout}",
        out.status
    );
    // Warnings (an unknown key, a bad value) do not change the exit status: none are allowed.
    let ours: Vec<&str> = stderr
        .lines()
        .chain(stdout.lines())
        .filter(|l| l.contains("rk3s"))
        .collect();
    assert!(
        ours.is_empty(),
        "systemd-analyze verify warns:\n{}",
        ours.join("\n")
    );

    // And it does catch a broken unit: the same check fails on a missing program.
    std::fs::remove_file(bin.join("rk3s-scheduler")).expect("stand-in removed");
    let out = Command::new(analyze)
        .arg("verify")
        .args(&files)
        .output()
        .expect("systemd-analyze runs");
    assert!(
        !out.status.success(),
        "verify passed without the scheduler's program"
    );
}
