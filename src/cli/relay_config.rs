//! `whtunnel relay --config FILE`: every relay flag from a TOML file.
//!
//! Each top-level key is a flag's long name, written as on the command
//! line (kebab-case: `hold-max-age`, `admin-listen`); its value is what the
//! flag takes, as a string or a number (`max-body = "25MiB"`,
//! `hold-max-events = 1000`). A flag that may be repeated takes an array
//! (`token = ["...", "..."]`), a switch takes `true`/`false`.
//!
//! The file is turned into flags and parsed by the same clap definitions
//! as the command line, so every flag (those other parts add too) is
//! accepted with the same checks. A flag given on the command line, or
//! through its environment variable, wins over the file. A bad key or value
//! is one line: `FILE:LINE: KEY: what is wrong`, like `whtunnel.toml`'s
//! errors ([`crate::config::ConfigError`]).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::Path;

use clap::parser::ValueSource;
use clap::{ArgAction, CommandFactory};
use toml::Spanned;

use super::args::Cli;
use crate::config::ConfigError;

/// The relay subcommand's name on the command line.
const RELAY: &str = "relay";

/// The FILE of `whtunnel relay ... --config FILE` (or `--config=FILE`), if
/// `argv` is such a command line.
pub(crate) fn requested(argv: &[OsString]) -> Option<std::path::PathBuf> {
    if argv.get(1).is_none_or(|a| a != RELAY) {
        return None;
    }
    let mut args = argv.iter().skip(2);
    while let Some(arg) = args.next() {
        // A value that is not UTF-8 (a path, say) is not `--config`.
        let Some(arg) = arg.to_str() else {
            continue;
        };
        if arg == "--" {
            return None;
        }
        if arg == "--config" {
            return args.next().map(std::path::PathBuf::from);
        }
        if let Some(file) = arg.strip_prefix("--config=") {
            return Some(file.into());
        }
    }
    None
}

/// The command line `argv` (a `whtunnel relay ... --config FILE` one) with
/// the file's settings put before the user's own flags, for every flag the
/// user did not set on the command line or through its environment variable.
pub(crate) fn merge(argv: &[OsString], file: &Path) -> Result<Vec<OsString>, ConfigError> {
    let text = std::fs::read_to_string(file).map_err(|e| ConfigError {
        file: file.to_path_buf(),
        line: None,
        key: None,
        message: format!("cannot read it: {e}"),
    })?;
    let from_file = flags_from(&text, file, argv)?;
    let at = argv
        .iter()
        .position(|a| a == RELAY)
        .map_or(argv.len(), |i| i + 1);
    let mut merged = argv[..at].to_vec();
    merged.extend(from_file);
    merged.extend_from_slice(&argv[at..]);
    Ok(merged)
}

/// Checks a relay config file as `whtunnel relay --config FILE` reads it:
/// every key, every value, and the flags together, without starting a
/// relay.
pub fn check_file(file: &Path) -> Result<(), ConfigError> {
    let argv: Vec<OsString> = ["whtunnel", RELAY, "--config"]
        .iter()
        .map(OsString::from)
        .chain(std::iter::once(file.as_os_str().to_owned()))
        .collect();
    let merged = merge(&argv, file)?;
    <Cli as clap::Parser>::try_parse_from(merged)
        .map(drop)
        .map_err(|e| ConfigError {
            file: file.to_path_buf(),
            line: None,
            key: None,
            message: clap_reason(&e),
        })
}

/// The flags the file stands for, less those the user set otherwise.
fn flags_from(text: &str, file: &Path, argv: &[OsString]) -> Result<Vec<OsString>, ConfigError> {
    let at = |span: std::ops::Range<usize>, key: Option<&str>, message: String| ConfigError {
        file: file.to_path_buf(),
        line: Some(text[..span.start.min(text.len())].matches('\n').count() + 1),
        key: key.map(str::to_string),
        message,
    };
    let table: BTreeMap<Spanned<String>, Spanned<toml::Value>> =
        toml::from_str(text).map_err(|e| {
            let message = e.message().trim().to_string();
            match e.span() {
                Some(span) => at(span, None, message),
                None => ConfigError {
                    file: file.to_path_buf(),
                    line: None,
                    key: None,
                    message,
                },
            }
        })?;
    let cli = Cli::command();
    let relay = cli
        .find_subcommand(RELAY)
        .expect("the relay subcommand exists");
    // What the user set: a file setting never overrides it. The command
    // line may be incomplete without the file (`--tls-key` here, its
    // `tls-cert` there): what it holds is read all the same.
    let given = Cli::command()
        .ignore_errors(true)
        .try_get_matches_from(argv)
        .ok();
    let given = given.as_ref().and_then(|m| m.subcommand_matches(RELAY));
    let mut flags = Vec::new();
    // In file order, so an error names the first bad line.
    let mut entries: Vec<_> = table.iter().collect();
    entries.sort_by_key(|(k, _)| k.span().start);
    for (key, value) in entries {
        let span = key.span();
        let name = key.get_ref().as_str();
        let err = |message: String| at(span.clone(), Some(name), message);
        if name == "config" {
            return Err(err(
                "a config file cannot name another one; remove this key".into(),
            ));
        }
        let Some(arg) = relay
            .get_arguments()
            .find(|a| a.get_long() == Some(name) && !a.is_hide_set())
        else {
            let hint = if name.contains('_') {
                format!(
                    " (keys are written like the flags: '{}')",
                    name.replace('_', "-")
                )
            } else {
                String::new()
            };
            return Err(err(format!(
                "unknown key{hint}; every key is a flag of 'whtunnel relay --help'"
            )));
        };
        if given.is_some_and(|m| {
            matches!(
                m.value_source(arg.get_id().as_str()),
                Some(ValueSource::CommandLine | ValueSource::EnvVariable)
            )
        }) {
            continue;
        }
        let flag = format!("--{name}");
        let switch = matches!(arg.get_action(), ArgAction::SetTrue | ArgAction::SetFalse);
        let repeatable = matches!(arg.get_action(), ArgAction::Append);
        let mut these: Vec<OsString> = Vec::new();
        match value.get_ref() {
            toml::Value::Boolean(on) if switch => {
                if *on {
                    these.push(flag.clone().into());
                }
            }
            _ if switch => return Err(err("expected true or false".into())),
            toml::Value::Array(items) if repeatable => {
                for item in items {
                    these.push(flag.clone().into());
                    these.push(scalar(item).map_err(&err)?.into());
                }
            }
            toml::Value::Array(_) => {
                return Err(err("takes one value, not an array".into()));
            }
            v => {
                these.push(flag.clone().into());
                these.push(scalar(v).map_err(&err)?.into());
            }
        }
        // Checked alone, so a bad value is reported at its line with clap's
        // own reason; flags that need another (`tls-cert` and `tls-key`)
        // are checked together below.
        let mut alone: Vec<OsString> = vec!["whtunnel".into(), RELAY.into()];
        alone.extend(these.iter().cloned());
        if let Err(e) = Cli::command().try_get_matches_from(alone) {
            use clap::error::ErrorKind;
            if matches!(
                e.kind(),
                ErrorKind::InvalidValue
                    | ErrorKind::ValueValidation
                    | ErrorKind::UnknownArgument
                    | ErrorKind::NoEquals
                    | ErrorKind::WrongNumberOfValues
                    | ErrorKind::TooManyValues
            ) {
                return Err(err(clap_reason(&e)));
            }
        }
        flags.extend(these);
    }
    Ok(flags)
}

/// A TOML scalar as the text a flag takes.
fn scalar(v: &toml::Value) -> Result<String, String> {
    match v {
        toml::Value::String(s) => Ok(s.clone()),
        toml::Value::Integer(i) => Ok(i.to_string()),
        toml::Value::Float(f) => Ok(f.to_string()),
        toml::Value::Boolean(b) => Ok(b.to_string()),
        toml::Value::Datetime(d) => Ok(d.to_string()),
        toml::Value::Array(_) => Err("expected a single value, not a nested array".into()),
        toml::Value::Table(_) => Err("expected a value, not a table".into()),
    }
}

/// Clap's one-line reason, without its `error: ` prefix and usage lines.
fn clap_reason(e: &clap::Error) -> String {
    let rendered = e.render().to_string();
    let first = rendered
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("invalid value");
    first.trim().trim_start_matches("error: ").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    fn flags(text: &str, args: &[&str]) -> Result<Vec<String>, String> {
        flags_from(text, Path::new("relay.toml"), &argv(args))
            .map(|v| {
                v.into_iter()
                    .map(|s| s.to_string_lossy().into_owned())
                    .collect()
            })
            .map_err(|e| e.to_string())
    }

    #[test]
    fn keys_become_flags_and_command_line_flags_win() {
        let text = "listen = \"127.0.0.1:0\"\nmax-body = \"1KiB\"\ntoken = [\"a\", \"b\"]\n\
                    hold-max-events = 5\nadmin-listen = 9090\n";
        let got = flags(text, &["whtunnel", "relay", "--max-body", "2KiB"]).unwrap();
        assert_eq!(
            got,
            [
                "--listen",
                "127.0.0.1:0",
                "--token",
                "a",
                "--token",
                "b",
                "--hold-max-events",
                "5",
                "--admin-listen",
                "9090"
            ]
        );
    }

    #[test]
    fn bad_keys_and_values_name_file_line_and_key() {
        let e = flags("listen = \"127.0.0.1:0\"\n\nmax-body = \"lots\"\n", &[]).unwrap_err();
        assert!(e.starts_with("relay.toml:3: max-body: "), "{e}");
        assert!(!e.contains('\n'), "{e}");
        let e = flags("# relay\nhold_max_age = \"1h\"\n", &[]).unwrap_err();
        assert!(
            e.starts_with("relay.toml:2: hold_max_age: unknown key"),
            "{e}"
        );
        assert!(e.contains("'hold-max-age'"), "{e}");
        let e = flags("listen = [\"a\"]\n", &[]).unwrap_err();
        assert_eq!(e, "relay.toml:1: listen: takes one value, not an array");
        let e = flags("listen = \n", &[]).unwrap_err();
        assert!(e.starts_with("relay.toml:1: "), "{e}");
        let e = flags("config = \"x.toml\"\n", &[]).unwrap_err();
        assert!(e.starts_with("relay.toml:1: config: "), "{e}");
    }

    #[test]
    fn only_a_relay_command_line_asks_for_a_config_file() {
        let file = |args: &[&str]| requested(&argv(args));
        assert_eq!(
            file(&["whtunnel", "relay", "--listen", "x", "--config", "r.toml"]),
            Some("r.toml".into())
        );
        assert_eq!(
            file(&["whtunnel", "relay", "--config=r.toml"]),
            Some("r.toml".into())
        );
        assert_eq!(file(&["whtunnel", "listen", "--config", "w.toml"]), None);
        assert_eq!(file(&["whtunnel", "relay"]), None);
    }

    #[test]
    fn a_flag_may_complete_a_pair_begun_in_the_file() {
        let got = flags(
            "tls-cert = \"c.pem\"\nlisten = \"127.0.0.1:0\"\n",
            &[
                "whtunnel",
                "relay",
                "--tls-key",
                "k.pem",
                "--listen",
                "0.0.0.0:1",
            ],
        )
        .unwrap();
        assert_eq!(got, ["--tls-cert", "c.pem"]);
    }

    #[test]
    fn merged_flags_go_right_after_the_subcommand() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("relay.toml");
        std::fs::write(&file, "max-body = \"1KiB\"\n").unwrap();
        let args = argv(&["whtunnel", "relay", "--config", "x"]);
        let merged = merge(&args, &file).unwrap();
        assert_eq!(
            merged,
            argv(&["whtunnel", "relay", "--max-body", "1KiB", "--config", "x"])
        );
    }
}
