//! `whtunnel fixtures save`, `send`, `test` and `trigger`: webhooks as
//! files in the repository, sent to the app like their provider would,
//! with no relay (see [`crate::fixture`]).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{anyhow, bail, Context as _, Result};

use super::args::{FixturesCommand, SendArgs, TestArgs, TriggerArgs};
use super::datadir::resolve_data_dir;
use super::requests::load_exchange;
use crate::capture;
use crate::config::Config;
use crate::fixture::check;
use crate::fixture::send::{self, Sender, Signing};
use crate::fixture::{self, catalog, printable, Fixture};
use crate::forward::Target;
use crate::units;

fn config(flag: Option<&Path>) -> Result<Config> {
    let cwd = std::env::current_dir().context("cannot read the current directory")?;
    Ok(Config::from_cli(flag, &cwd)?)
}

fn to_target(to: Option<&str>) -> Result<Option<Target>> {
    Ok(to.map(str::parse::<Target>).transpose()?)
}

/// `whtunnel fixtures save <ID>... --dir DIR`.
pub(crate) fn fixtures(command: FixturesCommand) -> Result<()> {
    let FixturesCommand::Save {
        ids,
        dir,
        config: config_flag,
        data_dir,
    } = command;
    let config = config(config_flag.as_deref())?;
    let data = resolve_data_dir(&data_dir)?;
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    // Every exchange is read before anything is written: a bad id leaves
    // the directory as it was.
    let mut files = Vec::new();
    for id in ids {
        let ex = load_exchange(&data, id)?;
        if ex.request.body.truncated {
            bail!("exchange #{id}: its body was not kept in full, so it cannot be a fixture");
        }
        let body = capture::read_body(&ex.request.body)
            .with_context(|| format!("cannot read the body of exchange #{id}"))?;
        let path_only = ex.request.path.split('?').next().unwrap_or_default();
        let rule = config.webhook_for(path_only).map(|w| &w.rule);
        let f = Fixture::from_exchange(&ex, &body, rule);
        files.push((dir.join(f.file_name(id)), f.to_text(), id));
    }
    for (path, text, id) in files {
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
        println!("#{id} -> {}", printable(&path.display().to_string()));
    }
    Ok(())
}

/// `whtunnel send <FILE|DIR>... [--to URL]`.
pub(crate) async fn send(args: SendArgs) -> Result<()> {
    let config = config(args.config.as_deref())?;
    let to = to_target(args.to.as_deref())?;
    let paths = fixture::collect(&args.fixtures)?;
    if paths.is_empty() {
        bail!("no fixtures (*.json) in the paths given");
    }
    let sender = Sender::new(units::DEFAULT_RESPONSE_TIMEOUT);
    let mut failed = 0;
    for path in paths {
        let shown = printable(&path.display().to_string());
        match send_one(&path, to.as_ref(), &config, &sender).await {
            Ok(line) => println!("{shown}: {line}"),
            Err(e) => {
                failed += 1;
                eprintln!("{shown}: {}", printable(&e));
            }
        }
    }
    if failed > 0 {
        bail!("{failed} fixture(s) could not be sent");
    }
    Ok(())
}

async fn send_one(
    path: &Path,
    to: Option<&Target>,
    config: &Config,
    sender: &Sender,
) -> std::result::Result<String, String> {
    let f = Fixture::load(path).map_err(|e| e.to_string())?;
    deliver(&f, to, config, sender).await
}

/// Signs and sends one fixture; the line says status, time and signing.
async fn deliver(
    f: &Fixture,
    to: Option<&Target>,
    config: &Config,
    sender: &Sender,
) -> std::result::Result<String, String> {
    let target = send::target_for(to, config, &f.request.path)?;
    let rule = send::rule_for(f, config)?;
    let prepared = send::prepare(f, rule.as_ref(), &target, SystemTime::now())?;
    let answer = sender.send(&prepared).await?;
    let signing = match &prepared.signing {
        Signing::Signed(who) => format!("signed as {who}"),
        Signing::NotNeeded => "not signed (no provider)".to_string(),
        Signing::Unsigned(why) => format!("UNSIGNED: {why}"),
    };
    Ok(printable(&format!(
        "{} in {} ({} {}, {signing})",
        answer.status,
        units::fmt_duration(answer.duration.as_secs_f64() * 1000.0),
        prepared.method,
        prepared.url
    )))
}

/// `whtunnel test <FILE|DIR>... [--to URL] [--junit FILE] [-j N] [--json]`.
pub(crate) async fn test(args: TestArgs) -> Result<()> {
    let config = config(args.config.as_deref())?;
    let to = to_target(args.to.as_deref())?;
    let paths = fixture::collect(&args.fixtures)?;
    if paths.is_empty() {
        bail!("no fixtures (*.json) in the paths given");
    }
    let json = args.json;
    let outcomes = check::run_all(
        paths,
        to.as_ref(),
        &config,
        usize::from(args.jobs),
        args.timeout.0,
        |o| {
            if !json {
                println!("{}", check::line(o));
            }
        },
    )
    .await;
    if let Some(file) = &args.junit {
        write_file(file, &check::junit_xml(&outcomes))?;
    }
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&check::json_report(&outcomes))?
        );
    } else {
        println!("{}", check::summary(&outcomes));
    }
    let bad: Vec<&str> = outcomes
        .iter()
        .filter(|o| !o.ok)
        .map(|o| o.name.as_str())
        .collect();
    if !bad.is_empty() {
        bail!(
            "{} of {} fixtures failed: {}",
            bad.len(),
            outcomes.len(),
            printable(&bad.join(", "))
        );
    }
    Ok(())
}

fn write_file(path: &PathBuf, text: &str) -> Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

/// `whtunnel trigger <PROVIDER> <EVENT> [--set PATH=VALUE]... [--to URL]`
/// and `trigger --list [PROVIDER] [--json]`.
pub(crate) async fn trigger(args: TriggerArgs) -> Result<()> {
    if args.list {
        let events = catalog::list(args.provider.as_deref()).map_err(|e| anyhow!(e))?;
        let mut out = std::io::stdout().lock();
        if args.json {
            let rows: Vec<_> = events
                .iter()
                .map(|(p, e)| serde_json::json!({"provider": p, "event": e}))
                .collect();
            writeln!(out, "{}", serde_json::to_string_pretty(&rows)?)?;
        } else {
            for (p, e) in events {
                writeln!(out, "{p:<18} {e}")?;
            }
        }
        return Ok(());
    }
    let (Some(provider), Some(event)) = (&args.provider, &args.event) else {
        bail!("name a provider and an event (see `whtunnel trigger --list`)");
    };
    let sender = catalog::sender(provider).map_err(|e| anyhow!(e))?;
    let mut f = sender
        .fixture(event, SystemTime::now())
        .map_err(|e| anyhow!(e))?;
    if let Some(body) = f.request.body.as_mut() {
        for assignment in &args.set {
            fixture::set::apply(body, assignment).map_err(|e| anyhow!("--set {e}"))?;
        }
    }
    let config = config(args.config.as_deref())?;
    let to = to_target(args.to.as_deref())?;
    let http = Sender::new(units::DEFAULT_RESPONSE_TIMEOUT);
    let line = deliver(&f, to.as_ref(), &config, &http)
        .await
        .map_err(|e| anyhow!(e))?;
    println!("{provider} {event}: {line}");
    if let Some(dir) = &args.save {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        f.expect = fixture::Expect::default();
        let path = dir.join(format!(
            "{}-{}.json",
            fixture::sanitise(provider),
            fixture::sanitise(event)
        ));
        write_file(&path, &f.to_text())?;
        println!("saved {}", printable(&path.display().to_string()));
    }
    Ok(())
}
