//! `whtunnel requests list|show|export`: reading the capture store and
//! printing it as tables, JSON, curl or HAR.

use std::path::Path;

use anyhow::{anyhow, bail, Context as _, Result};

use super::args::RequestsCommand;
use super::datadir::resolve_data_dir;
use crate::capture::{self, ExchangeSummary, Store};
use crate::inspect::session::bodies_contain;
use crate::inspect::state as filter;

/// Opens the capture store of `dir` for reading, or `None` when nothing
/// was ever recorded there.
pub(crate) fn open_captures(dir: &Path) -> Result<Option<Store>> {
    if !dir.join(capture::store::DB_FILE).exists() {
        return Ok(None);
    }
    Store::open_reader(dir)
        .map(Some)
        .with_context(|| format!("cannot open the capture store in {}", dir.display()))
}

pub(crate) fn load_exchange(dir: &Path, id: i64) -> Result<capture::Exchange> {
    open_captures(dir)?
        .map(|s| s.get(id))
        .transpose()?
        .flatten()
        .ok_or_else(|| {
            anyhow!(
                "no exchange #{id} in {} (see `whtunnel requests list`)",
                dir.display()
            )
        })
}

/// The newest stored exchanges matching `filter` (the inspector's `/`
/// language), at most `limit`. Without a filter the store does the limiting;
/// with one, summaries are matched newest first and, for a `body:` term,
/// each candidate's bodies are loaded one at a time and searched, stopping
/// as soon as `limit` have matched.
fn list_matching(
    store: &Store,
    filter: Option<&str>,
    limit: Option<usize>,
) -> Result<Vec<ExchangeSummary>> {
    let Some(filter) = filter else {
        return Ok(store.list(&capture::ListQuery { limit })?);
    };
    let needle = filter::body_term(filter).map(str::as_bytes);
    let mut out = Vec::new();
    for s in store.list(&capture::ListQuery::default())? {
        if limit.is_some_and(|l| out.len() >= l) {
            break;
        }
        if !filter::matches_summary(filter, &s) {
            continue;
        }
        if let Some(needle) = needle {
            // Deleted by retention since the listing: it no longer matches.
            let Some(mut ex) = store.get(s.id)? else {
                continue;
            };
            if !bodies_contain(&mut ex, needle) {
                continue;
            }
        }
        out.push(s);
    }
    Ok(out)
}

/// Creates (or truncates) `path` readable by the user alone: exports hold
/// every header and body, secrets included.
fn create_private(path: &Path) -> Result<std::fs::File> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let file = opts
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    // An existing file keeps its mode on open: narrow it too.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("cannot make {} private", path.display()))?;
    }
    Ok(file)
}

pub(crate) fn requests(command: RequestsCommand) -> Result<()> {
    use capture::export;
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match command {
        RequestsCommand::List {
            json,
            limit,
            filter,
            data_dir,
        } => {
            let dir = resolve_data_dir(&data_dir)?;
            let filter = filter.as_deref().map(str::trim).filter(|f| !f.is_empty());
            if let Some(bad) = filter.and_then(filter::bad_sig_term) {
                bail!(
                    "--filter: `sig:{bad}` is not a signature verdict \
                     (valid, invalid, unsigned or unchecked)"
                );
            }
            let limit = limit.map(|n| n as usize);
            let items = match open_captures(&dir)? {
                Some(store) => list_matching(&store, filter, limit)?,
                None => Vec::new(),
            };
            if json {
                writeln!(
                    out,
                    "{}",
                    serde_json::to_string_pretty(&export::list_json(&items))?
                )?;
            } else if items.is_empty() && filter.is_some() {
                writeln!(out, "no exchange matches the filter")?;
            } else if items.is_empty() {
                writeln!(out, "no exchanges recorded in {} yet", dir.display())?;
            } else {
                write!(out, "{}", export::list_human(&items))?;
            }
        }
        RequestsCommand::Show {
            id,
            json,
            curl,
            data_dir,
        } => {
            let ex = load_exchange(&resolve_data_dir(&data_dir)?, id)?;
            if json {
                writeln!(
                    out,
                    "{}",
                    serde_json::to_string_pretty(&export::show_json(&ex))?
                )?;
            } else if curl {
                writeln!(out, "{}", export::curl_command(&ex, None))?;
            } else {
                write!(out, "{}", export::show_human(&ex))?;
            }
        }
        RequestsCommand::Export {
            har,
            redact,
            data_dir,
        } => {
            let dir = resolve_data_dir(&data_dir)?;
            let store = open_captures(&dir)?
                .ok_or_else(|| anyhow!("no exchanges recorded in {} yet", dir.display()))?;
            let file = create_private(&har)?;
            let options = export::HarOptions { redact };
            let n = export::write_har_with(&store, None, options, std::io::BufWriter::new(file))?;
            eprintln!("wrote {n} exchanges to {}", har.display());
        }
    }
    Ok(())
}
