//! What the component binaries (`rk3s-apiserver`, `rk3s-scheduler`, `rk3s-controller`) do the
//! same way before they start: logging to stderr, and their configuration merged from the
//! defaults < the `--config` YAML file < the environment (`RK3S_<FLAG>`, dashes as
//! underscores) < the flags.
//!
//! The config file's keys are the binary's long flags. A key the binary does not know, a file
//! the user named that does not exist, or a value of the wrong type is an error that names the
//! key and the file — a typo never silently falls back to a default. The default file (the
//! `--config` flag's default, such as `/etc/rk3s/scheduler.yaml`) may be missing.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches};
use figment::Figment;
use figment::providers::{Env, Format as _, Serialized, Yaml};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Why a binary's configuration could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The `--config` file given on the command line is not there or not readable.
    #[error("config file {}: {reason}", path.display())]
    File { path: PathBuf, reason: String },
    /// The config file has a key that is not one of the binary's flags.
    #[error(
        "config file {}: unknown key {key:?} (the keys are the long flags of --help{only})",
        path.display(),
        only = if flag_only.is_empty() {
            String::new()
        } else {
            format!("; {} only as flags", flag_only.join(", "))
        }
    )]
    UnknownKey {
        path: PathBuf,
        key: String,
        flag_only: Vec<String>,
    },
    /// A value of the wrong type, from any source (figment names the key and the source).
    #[error("{0}")]
    Value(#[from] Box<figment::Error>),
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`), in colour only on a terminal (not
/// into journald).
pub fn init_logging() {
    use std::io::IsTerminal as _;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

/// The command line, parsed, with where `--config` came from.
#[derive(Debug)]
pub struct CommandLine<A> {
    pub args: A,
    /// The config file's path.
    pub config: PathBuf,
    /// Whether the user named the file (then it must exist) or it is the flag's default.
    pub config_given: bool,
}

/// Parses the process's arguments into `A`, whose `--config` flag (id `config`, a path with a
/// default) names the config file. Exits with clap's message on a bad command line.
pub fn parse<A: CommandFactory + FromArgMatches>() -> CommandLine<A> {
    let matches = A::command().get_matches();
    from_matches(&matches).unwrap_or_else(|e| e.exit())
}

fn from_matches<A: FromArgMatches>(matches: &ArgMatches) -> Result<CommandLine<A>, clap::Error> {
    let args = A::from_arg_matches(matches)?;
    let config = matches
        .get_one::<PathBuf>("config")
        .cloned()
        .unwrap_or_default();
    let config_given = !matches!(
        matches.value_source("config"),
        None | Some(ValueSource::DefaultValue)
    );
    Ok(CommandLine {
        args,
        config,
        config_given,
    })
}

/// Merges the configuration `T` of a binary whose flags are `A`: `T`'s defaults < the config
/// file < `RK3S_*` environment variables < the flags set on the command line (`A` serializes
/// only those, under their long names). `flag_only` are flags that are no config key (such as
/// `kubeconfig`); `config`, `help` and `version` never are.
pub fn load<T, A>(cli: &CommandLine<A>, flag_only: &[&str]) -> Result<T, ConfigError>
where
    T: Default + Serialize + DeserializeOwned,
    A: CommandFactory + Serialize,
{
    let mut figment = Figment::from(Serialized::defaults(T::default()));
    let path = &cli.config;
    if path.exists() || cli.config_given {
        let mut known = file_keys::<A>(flag_only);
        // Settings with no flag of their own (the configs' own keys) may be in the file too.
        let own = figment::Provider::data(&Serialized::defaults(T::default()))
            .map_err(|e| ConfigError::Value(Box::new(e)))?;
        known.extend(own.values().flat_map(|dict| dict.keys()).cloned());
        check_keys(path, &known, flag_only)?;
        figment = figment.merge(Yaml::file_exact(path));
    }
    figment
        .merge(Env::prefixed("RK3S_").map(|k| k.as_str().replace('_', "-").into()))
        .merge(Serialized::defaults(&cli.args))
        .extract()
        .map_err(|e| ConfigError::Value(Box::new(e)))
}

/// The keys a config file may have: the long flags of `A` but `flag_only` and the flags about
/// the process itself.
fn file_keys<A: CommandFactory>(flag_only: &[&str]) -> BTreeSet<String> {
    A::command()
        .get_arguments()
        .filter_map(|a| a.get_long())
        .filter(|l| !matches!(*l, "config" | "help" | "version") && !flag_only.contains(l))
        .map(str::to_string)
        .collect()
}

/// Reads the file's top-level keys and refuses one that is not in `known`.
fn check_keys(
    path: &Path,
    known: &BTreeSet<String>,
    flag_only: &[&str],
) -> Result<(), ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let data = figment::Provider::data(&Yaml::string(&text)).map_err(|e| ConfigError::File {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let keys = data.values().flat_map(|dict| dict.keys());
    for key in keys {
        if !known.contains(key) {
            return Err(ConfigError::UnknownKey {
                path: path.to_path_buf(),
                key: key.clone(),
                flag_only: flag_only.iter().map(|s| s.to_string()).collect(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use serde::Deserialize;

    #[derive(Debug, Parser, Serialize)]
    struct Args {
        #[arg(long, default_value = "/nonexistent/rk3s-test.yaml")]
        #[serde(skip)]
        config: PathBuf,
        #[arg(long)]
        #[serde(skip)]
        kubeconfig: Option<PathBuf>,
        #[arg(long)]
        #[serde(rename = "parallel-binds", skip_serializing_if = "Option::is_none")]
        parallel_binds: Option<u32>,
        #[arg(long)]
        #[serde(rename = "scheduler-name", skip_serializing_if = "Option::is_none")]
        scheduler_name: Option<String>,
    }

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    #[serde(rename_all = "kebab-case", default)]
    struct Config {
        parallel_binds: u32,
        scheduler_name: String,
        /// A setting with no flag.
        leader_elect_identity: String,
    }

    impl Default for Config {
        fn default() -> Self {
            Config {
                parallel_binds: 16,
                scheduler_name: "default-scheduler".into(),
                leader_elect_identity: String::new(),
            }
        }
    }

    fn cli(argv: &[&str]) -> CommandLine<Args> {
        let matches = Args::command()
            .try_get_matches_from(std::iter::once("bin").chain(argv.iter().copied()))
            .unwrap();
        from_matches(&matches).unwrap()
    }

    fn file(dir: &Path, text: &str) -> String {
        let path = dir.join("c.yaml");
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    }

    #[test]
    fn a_missing_default_file_is_fine_a_missing_named_one_is_not() {
        let c = cli(&[]);
        assert!(!c.config_given);
        assert_eq!(
            load::<Config, _>(&c, &["kubeconfig"]).unwrap(),
            Config::default()
        );
        let c = cli(&["--config", "/nonexistent/named.yaml"]);
        assert!(c.config_given);
        let err = load::<Config, _>(&c, &["kubeconfig"])
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("config file /nonexistent/named.yaml: "),
            "{err}"
        );
    }

    #[test]
    fn flags_win_over_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = file(
            dir.path(),
            "parallel-binds: 3\nscheduler-name: mine\nleader-elect-identity: me\n",
        );
        let c = cli(&["--config", &path, "--parallel-binds", "7"]);
        let got: Config = load(&c, &["kubeconfig"]).unwrap();
        assert_eq!(
            got,
            Config {
                parallel_binds: 7,
                scheduler_name: "mine".into(),
                leader_elect_identity: "me".into(),
            }
        );
    }

    #[test]
    fn unknown_flag_only_and_badly_typed_keys_name_the_key_and_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = file(dir.path(), "parallel-bind: 3\n");
        let err = load::<Config, _>(&cli(&["--config", &path]), &["kubeconfig"])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&path) && err.contains("\"parallel-bind\""),
            "{err}"
        );
        let path = file(dir.path(), "kubeconfig: /x\n");
        let err = load::<Config, _>(&cli(&["--config", &path]), &["kubeconfig"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"kubeconfig\"") && err.contains("kubeconfig only as flags"));
        let path = file(dir.path(), "parallel-binds: many\n");
        let err = load::<Config, _>(&cli(&["--config", &path]), &["kubeconfig"])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("parallel-binds") && err.contains(&path),
            "{err}"
        );
    }
}
