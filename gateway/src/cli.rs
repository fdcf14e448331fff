//! The command line of CONTRACT.md: `roost`, `roost run --config FILE`, `roost check --config
//! FILE`, `roost status [--http URL]`, `roost --version`. Parsing only; main.rs acts on it.

use std::path::PathBuf;

/// What the user asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Run a node: from a file, or on the built-in defaults when `config` is `None`.
    Run {
        /// The TOML config file.
        config: Option<PathBuf>,
    },
    /// Validate a config file and report every problem.
    Check {
        /// The TOML config file.
        config: PathBuf,
    },
    /// Print the cluster as a running node sees it.
    Status {
        /// The node's HTTP base URL.
        http: String,
    },
    /// Print the version.
    Version,
    /// Print usage.
    Help,
}

/// The node's HTTP address when `roost status` is not given one.
pub const DEFAULT_STATUS_URL: &str = "http://127.0.0.1:8080";

/// Usage text, printed by `roost --help` and after a usage error.
pub const USAGE: &str = "\
Usage:
  roost                          run a node on the built-in defaults (demo devices included)
  roost run --config FILE        run a node from a TOML config file
  roost check --config FILE      validate a config file (exit 0 valid, 2 invalid)
  roost status [--http URL]      print the cluster as a node sees it (default http://127.0.0.1:8080)
  roost --version                print the version
  roost --help                   print this help

Logging: RUST_LOG (e.g. RUST_LOG=debug) overrides the config's [log] level.";

/// Parses the arguments after the program name.
pub fn parse<I: IntoIterator<Item = String>>(args: I) -> Result<Command, String> {
    let mut args = args.into_iter();
    let Some(first) = args.next() else {
        return Ok(Command::Run { config: None });
    };
    let rest: Vec<String> = args.collect();
    match first.as_str() {
        "-V" | "--version" | "version" => no_more(&rest).map(|()| Command::Version),
        "-h" | "--help" | "help" => Ok(Command::Help),
        "run" => {
            let config = flag_value(&rest, "--config")?;
            Ok(Command::Run {
                config: Some(config.ok_or("`roost run` needs --config FILE")?.into()),
            })
        }
        "check" => {
            let config = flag_value(&rest, "--config")?;
            Ok(Command::Check {
                config: config.ok_or("`roost check` needs --config FILE")?.into(),
            })
        }
        "status" => Ok(Command::Status {
            http: flag_value(&rest, "--http")?.unwrap_or_else(|| DEFAULT_STATUS_URL.to_owned()),
        }),
        other => Err(format!("unknown command `{other}`")),
    }
}

fn no_more(rest: &[String]) -> Result<(), String> {
    match rest.first() {
        Some(extra) => Err(format!("unexpected argument `{extra}`")),
        None => Ok(()),
    }
}

/// Reads `--flag VALUE` or `--flag=VALUE`; anything else is an error.
fn flag_value(rest: &[String], flag: &str) -> Result<Option<String>, String> {
    let mut value = None;
    let mut i = 0;
    while i < rest.len() {
        let arg = &rest[i];
        if arg == flag {
            let v = rest.get(i + 1).ok_or(format!("{flag} needs a value"))?;
            value = Some(v.clone());
            i += 2;
        } else if let Some(v) = arg.strip_prefix(flag).and_then(|r| r.strip_prefix('=')) {
            value = Some(v.to_owned());
            i += 1;
        } else {
            return Err(format!("unexpected argument `{arg}`"));
        }
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<Command, String> {
        parse(args.iter().map(|s| s.to_string()))
    }

    #[test]
    fn commands() {
        assert_eq!(p(&[]), Ok(Command::Run { config: None }));
        assert_eq!(
            p(&["run", "--config", "a.toml"]),
            Ok(Command::Run {
                config: Some("a.toml".into())
            })
        );
        assert_eq!(
            p(&["check", "--config=b.toml"]),
            Ok(Command::Check {
                config: "b.toml".into()
            })
        );
        assert_eq!(
            p(&["status"]),
            Ok(Command::Status {
                http: DEFAULT_STATUS_URL.into()
            })
        );
        assert_eq!(
            p(&["status", "--http", "http://10.0.0.2:8081"]),
            Ok(Command::Status {
                http: "http://10.0.0.2:8081".into()
            })
        );
        assert_eq!(p(&["--version"]), Ok(Command::Version));
    }

    #[test]
    fn usage_errors() {
        assert!(p(&["run"]).is_err());
        assert!(p(&["check", "--config"]).is_err());
        assert!(p(&["frobnicate"]).is_err());
        assert!(p(&["run", "--config", "a", "--verbose"]).is_err());
        assert!(p(&["--version", "x"]).is_err());
    }
}
