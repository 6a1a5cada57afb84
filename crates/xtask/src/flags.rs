//! Command-line parsing, by hand: four subcommands do not need a parser crate.

use std::fmt;

pub(crate) const USAGE: &str = "\
usage: cargo xtask <command>

commands:
  deps                    install what the tests need (Debian packages, idempotently) and
                          make sure Postgres (127.0.0.1:5432) and MariaDB (127.0.0.1:3306) run
  test                    deps, then every test tier: lint, build, tests (what .ci/run runs)
  bench [<name> [args]]   run a benchmark; without a name, list them
  codegen                 regenerate the apiserver's protobuf message table from k8s-pb
  dist                    the rk3s binary in the `dist` profile (fat LTO, stripped); prints
                          its path and size
  help                    this text";

/// What to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Command {
    Help,
    Deps,
    Test,
    /// A benchmark by name (`None`: list them), with arguments passed on to it.
    Bench {
        name: Option<String>,
        args: Vec<String>,
    },
    Dist,
    Codegen,
}

/// A command line that does not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum UsageError {
    MissingCommand,
    UnknownCommand(String),
    UnexpectedArgument {
        command: &'static str,
        argument: String,
    },
}

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UsageError::MissingCommand => write!(f, "no command given"),
            UsageError::UnknownCommand(c) => write!(f, "unknown command {c:?}"),
            UsageError::UnexpectedArgument { command, argument } => {
                write!(
                    f,
                    "`cargo xtask {command}` takes no arguments, got {argument:?}"
                )
            }
        }
    }
}

impl std::error::Error for UsageError {}

/// Parses the arguments after `cargo xtask`.
pub(crate) fn parse(args: &[String]) -> Result<Command, UsageError> {
    let Some((first, rest)) = args.split_first() else {
        return Err(UsageError::MissingCommand);
    };
    let no_args = |command: &'static str, value: Command| match rest.first() {
        None => Ok(value),
        Some(arg) => Err(UsageError::UnexpectedArgument {
            command,
            argument: arg.clone(),
        }),
    };
    match first.as_str() {
        "help" | "-h" | "--help" => Ok(Command::Help),
        "deps" => no_args("deps", Command::Deps),
        "test" => no_args("test", Command::Test),
        "dist" => no_args("dist", Command::Dist),
        "codegen" => no_args("codegen", Command::Codegen),
        "bench" => {
            let (name, args) = match rest.split_first() {
                None => (None, Vec::new()),
                Some((name, args)) => {
                    // `cargo xtask bench datastore -- --foo` and `... datastore --foo` are the same.
                    let args = match args.split_first() {
                        Some((sep, after)) if sep == "--" => after.to_vec(),
                        _ => args.to_vec(),
                    };
                    (Some(name.clone()), args)
                }
            };
            Ok(Command::Bench { name, args })
        }
        other => Err(UsageError::UnknownCommand(other.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(line: &str) -> Result<Command, UsageError> {
        let args: Vec<String> = line.split_whitespace().map(String::from).collect();
        parse(&args)
    }

    #[test]
    fn simple_commands() {
        assert_eq!(parse_str("deps"), Ok(Command::Deps));
        assert_eq!(parse_str("test"), Ok(Command::Test));
        assert_eq!(parse_str("dist"), Ok(Command::Dist));
        assert_eq!(parse_str("codegen"), Ok(Command::Codegen));
        assert_eq!(parse_str("--help"), Ok(Command::Help));
    }

    #[test]
    fn bench_takes_a_name_and_passes_the_rest_on() {
        assert_eq!(
            parse_str("bench"),
            Ok(Command::Bench {
                name: None,
                args: vec![]
            })
        );
        assert_eq!(
            parse_str("bench datastore --backends sqlite"),
            Ok(Command::Bench {
                name: Some("datastore".into()),
                args: vec!["--backends".into(), "sqlite".into()],
            })
        );
        assert_eq!(
            parse_str("bench datastore -- --quick"),
            Ok(Command::Bench {
                name: Some("datastore".into()),
                args: vec!["--quick".into()]
            })
        );
    }

    #[test]
    fn bad_command_lines_are_errors() {
        assert_eq!(parse_str(""), Err(UsageError::MissingCommand));
        assert_eq!(
            parse_str("tset"),
            Err(UsageError::UnknownCommand("tset".into()))
        );
        assert_eq!(
            parse_str("deps --now"),
            Err(UsageError::UnexpectedArgument {
                command: "deps",
                argument: "--now".into()
            })
        );
        assert!(parse_str("test extra").is_err());
    }
}
