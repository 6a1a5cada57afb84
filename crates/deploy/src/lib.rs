//! Deployment assets of rk3s: the systemd units (`systemd/`), and later the install script and
//! the add-on manifests that a server deploys on start (node side).
//!
//! The units are plain files to copy to `/etc/systemd/system/`; [`SYSTEMD_UNITS`] embeds them so
//! that a binary can install them and tests can check them. They expect the binaries in
//! `/usr/local/bin/` and the data dir `/var/lib/rk3s`:
//!
//! - `rk3s.service`: `rk3s server`, the whole control plane in one process;
//! - `rk3s-control-plane.target` with `rk3s-datastore.service`, `rk3s-apiserver.service`,
//!   `rk3s-scheduler.service`, `rk3s-controller.service`: one process per component. The target
//!   and `rk3s.service` conflict: starting one stops the other.

/// A systemd unit: its file name and contents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unit {
    pub name: &'static str,
    pub contents: &'static str,
}

/// Every unit in `systemd/`.
pub const SYSTEMD_UNITS: &[Unit] = &[
    Unit {
        name: "rk3s.service",
        contents: include_str!("../systemd/rk3s.service"),
    },
    Unit {
        name: "rk3s-control-plane.target",
        contents: include_str!("../systemd/rk3s-control-plane.target"),
    },
    Unit {
        name: "rk3s-datastore.service",
        contents: include_str!("../systemd/rk3s-datastore.service"),
    },
    Unit {
        name: "rk3s-apiserver.service",
        contents: include_str!("../systemd/rk3s-apiserver.service"),
    },
    Unit {
        name: "rk3s-scheduler.service",
        contents: include_str!("../systemd/rk3s-scheduler.service"),
    },
    Unit {
        name: "rk3s-controller.service",
        contents: include_str!("../systemd/rk3s-controller.service"),
    },
];

/// Where the units expect the rk3s binaries.
pub const BIN_DIR: &str = "/usr/local/bin";

impl Unit {
    /// The values of `key=` lines (in any section), in order.
    pub fn values(&self, key: &str) -> Vec<&'static str> {
        self.contents
            .lines()
            .map(str::trim)
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split_once('='))
            .filter(|(k, _)| k.trim() == key)
            .map(|(_, v)| v.trim())
            .collect()
    }

    /// The `ExecStart=` command line split into words (the units use no quoting).
    pub fn exec_start(&self) -> Option<Vec<&'static str>> {
        self.values("ExecStart")
            .first()
            .map(|line| line.split_whitespace().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_in_systemd_is_listed() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd");
        let mut files: Vec<String> = std::fs::read_dir(&dir)
            .expect("systemd/ lists")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        files.sort();
        let mut listed: Vec<&str> = SYSTEMD_UNITS.iter().map(|u| u.name).collect();
        listed.sort();
        assert_eq!(files, listed);
    }

    #[test]
    fn exec_start_of_the_server_unit() {
        let unit = SYSTEMD_UNITS
            .iter()
            .find(|u| u.name == "rk3s.service")
            .expect("rk3s.service");
        assert_eq!(
            unit.exec_start(),
            Some(vec!["/usr/local/bin/rk3s", "server"])
        );
        assert_eq!(unit.values("KillMode"), ["process"]);
        assert_eq!(unit.values("Delegate"), ["yes"]);
    }
}
