//! `cargo xtask bench <name> [args...]`: the benchmarks, each a `cargo bench` target of the
//! crate it measures. Arguments after the name go to the benchmark.

use std::process::ExitCode;

use crate::{cmd, deps};

/// A benchmark, and the issue that delivers it if it is not there yet.
#[derive(Debug)]
pub(crate) struct Bench {
    pub(crate) name: &'static str,
    pub(crate) what: &'static str,
    pub(crate) target: Target,
}

#[derive(Debug)]
pub(crate) enum Target {
    /// `cargo bench -p <package> --bench <bench>`.
    Cargo {
        package: &'static str,
        bench: &'static str,
    },
    /// Measured by xtask itself (it spawns the built binaries): this function, with the
    /// arguments after the name.
    Xtask {
        run: fn(&[String]) -> anyhow::Result<ExitCode>,
    },
    /// Not written yet.
    #[allow(dead_code)]
    NotYet { issue: u32 },
}

pub(crate) const BENCHES: &[Bench] = &[
    Bench {
        name: "datastore",
        what: "writes/s (1 and 16 clients), reads/s, list of 10k keys, watch latency p50/p99 \
               per backend; the etcd endpoint on SQLite against real etcd",
        target: Target::Cargo {
            package: "rk3s-datastore",
            bench: "datastore",
        },
    },
    Bench {
        name: "apiserver",
        what: "the rk3s-apiserver process on SQLite: creates/s, get p50/p99, list of 10k pods, \
               watch fan-out to 1000 watchers, RSS idle and loaded",
        target: Target::Cargo {
            package: "rk3s-apiserver",
            bench: "apiserver",
        },
    },
    Bench {
        name: "scheduler",
        what: "hollow nodes: 10k pods onto 5k nodes, pods/s (--nodes N --pods M)",
        target: Target::Cargo {
            package: "rk3s-scheduler",
            bench: "scheduler",
        },
    },
    Bench {
        name: "controller",
        what: "the pods of 100 Deployments of 100 replicas (10k) created by the controller \
               manager, pods/s (--deployments N --replicas M)",
        target: Target::Cargo {
            package: "rk3s-controller",
            bench: "controller",
        },
    },
    Bench {
        name: "startup",
        what: "rk3s server to /readyz (cold, warm), idle RSS, dist binary size, beside K3s's \
               published figures (--runs N --profile release|dist --bin PATH)",
        target: Target::Xtask {
            run: crate::startup::run,
        },
    },
];

pub(crate) fn run(name: Option<&str>, args: &[String]) -> anyhow::Result<ExitCode> {
    let Some(name) = name else {
        list();
        return Ok(ExitCode::SUCCESS);
    };
    let Some(bench) = BENCHES.iter().find(|b| b.name == name) else {
        eprintln!("unknown benchmark {name:?}\n");
        list();
        return Ok(ExitCode::from(2));
    };
    match bench.target {
        Target::Xtask { run } => run(args),
        Target::NotYet { issue } => {
            eprintln!("the {name} benchmark is not written yet: it arrives with issue #{issue}");
            Ok(ExitCode::from(2))
        }
        Target::Cargo { package, bench } => {
            // Benchmarks use the same servers as the integration tests.
            deps::ensure()?;
            let mut command = cmd::cargo();
            command
                .args(["bench", "-p", package, "--bench", bench, "--"])
                .args(args);
            let status = cmd::status(&mut command)?;
            Ok(if status.success() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}

fn list() {
    println!("benchmarks (cargo xtask bench <name> [args...]):");
    for bench in BENCHES {
        let state = match bench.target {
            Target::Cargo { .. } | Target::Xtask { .. } => "available".to_string(),
            Target::NotYet { issue } => format!("not yet (issue #{issue})"),
        };
        println!("  {:<10} {:<22} {}", bench.name, state, bench.what);
    }
}
