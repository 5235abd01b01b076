//! `whtunnel requests list|show|export`: reading the capture store and
//! printing it as tables, JSON, curl or HAR.

use std::path::Path;

use anyhow::{anyhow, Context as _, Result};

use super::args::RequestsCommand;
use super::datadir::resolve_data_dir;
use crate::capture::{self, Store};

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
        RequestsCommand::List { json, data_dir } => {
            let dir = resolve_data_dir(&data_dir)?;
            let items = match open_captures(&dir)? {
                Some(store) => store.list(&capture::ListQuery::default())?,
                None => Vec::new(),
            };
            if json {
                writeln!(
                    out,
                    "{}",
                    serde_json::to_string_pretty(&export::list_json(&items))?
                )?;
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
