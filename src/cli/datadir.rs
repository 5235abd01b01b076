//! The data directory: where it is, who may read it, and what `listen`
//! keeps in it between runs (the lock, the tunnel name, the agent id) and
//! the relay its generated token.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context as _, Result};

use super::args::DataDirArg;
use crate::tunnel::protocol::{generate_name, generate_token, is_valid_name};

/// Takes `<dir>/listen.lock` for as long as the returned file lives. Two
/// agents on one data dir would share a tunnel name and agent id (each
/// reconnect taking the tunnel from the other) and one capture store (each
/// start-up deleting the other's body files in flight), so the second is
/// refused. The kernel drops the lock when the process exits, however it exits.
pub(crate) fn lock_data_dir(dir: &Path) -> Result<std::fs::File> {
    let path = dir.join("listen.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => bail!(
            "another 'whtunnel listen' is already using {}; stop it, or give this one its own --data-dir",
            dir.display()
        ),
        // A filesystem without locks: carry on unlocked rather than refuse
        // to run at all.
        Err(std::fs::TryLockError::Error(e)) => {
            tracing::warn!("cannot lock {}: {e}", path.display());
            Ok(file)
        }
    }
}

/// The data directory: `--data-dir`, `WHTUNNEL_DATA_DIR`, or the OS default.
pub(crate) fn resolve_data_dir(arg: &DataDirArg) -> Result<PathBuf> {
    match &arg.data_dir {
        Some(d) => Ok(d.clone()),
        None => dirs::data_dir().map(|d| d.join("whtunnel")).ok_or_else(|| {
            anyhow!("no home data directory found; pass --data-dir or set WHTUNNEL_DATA_DIR")
        }),
    }
}

/// Creates the data dir readable only by its owner: it holds captured
/// webhooks, which carry secrets.
/// Creates the data directory (and missing parents) readable by the user
/// alone. A directory that already exists keeps its mode, which may be the
/// user's choice or a shared one (`/tmp`'s sticky bit); when others can
/// read it, the warning to print is returned (captures hold secrets). The
/// caller prints it once the command is under way, so that a refusal is
/// still one line.
pub(crate) fn ensure_private_dir(dir: &Path) -> Result<Option<String>> {
    let cannot = || format!("cannot create data directory {}", dir.display());
    if dir.is_dir() {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir)
                .with_context(cannot)?
                .permissions()
                .mode();
            if mode & 0o077 != 0 {
                return Ok(Some(format!(
                    "warning: data directory {} is open to other users (mode {:o}); \
                     captured webhooks and their secrets are kept there \
                     (chmod 700 it, or pick another --data-dir)",
                    dir.display(),
                    mode & 0o7777
                )));
            }
        }
        return Ok(None);
    }
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir).with_context(cannot)?;
    Ok(None)
}

pub(crate) fn write_private(path: &Path, contents: &str) -> Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(contents.as_bytes())?;
    Ok(())
}

/// The tunnel name: `--name`, or the one kept in the data dir, or a new one
/// (kept, so the URL pasted into a provider's dashboard keeps working).
pub(crate) fn tunnel_name(arg: Option<&str>, dir: &Path) -> Result<String> {
    if let Some(n) = arg {
        if !is_valid_name(n) {
            bail!("invalid --name '{n}': use 1-63 characters of a-z, 0-9 and '-', not starting or ending with '-'");
        }
        return Ok(n.to_string());
    }
    let path = dir.join("name");
    if let Ok(saved) = std::fs::read_to_string(&path) {
        let saved = saved.trim();
        if is_valid_name(saved) {
            return Ok(saved.to_string());
        }
    }
    let name = generate_name();
    write_private(&path, &format!("{name}\n"))?;
    Ok(name)
}

/// This agent's id, generated once per data dir.
pub(crate) fn agent_id(dir: &Path) -> Result<String> {
    let path = dir.join("agent-id");
    if let Ok(saved) = std::fs::read_to_string(&path) {
        let saved = saved.trim();
        if !saved.is_empty() && saved.len() <= 64 {
            return Ok(saved.to_string());
        }
    }
    let id = generate_name();
    write_private(&path, &format!("{id}\n"))?;
    Ok(id)
}

/// The relay's own token, generated once and kept in `dir` (0600), for a
/// relay started without `--token`. Returns it and the file it is in;
/// `warn` gets the warning about a data directory others can read (the
/// caller logs it in its format).
pub(crate) fn relay_token(dir: &Path, warn: impl Fn(&str)) -> Result<(String, PathBuf)> {
    if let Some(warning) = ensure_private_dir(dir)? {
        warn(&warning);
    }
    let path = dir.join("relay-token");
    let token = match std::fs::read_to_string(&path) {
        Ok(t) if !t.trim().is_empty() => t.trim().to_string(),
        _ => {
            let t = generate_token();
            write_private(&path, &format!("{t}\n"))?;
            t
        }
    };
    Ok((token, path))
}

#[cfg(test)]
#[cfg(unix)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn an_existing_directory_keeps_its_mode_and_an_open_one_is_reported() {
        let tmp = tempfile::tempdir().unwrap();
        let shared = tmp.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
        let warning = ensure_private_dir(&shared).unwrap().unwrap();
        assert_eq!(mode(&shared), 0o1777, "the sticky bit is kept");
        assert!(
            warning.contains("1777") && warning.contains("--data-dir"),
            "{warning}"
        );

        let mine = tmp.path().join("mine");
        std::fs::create_dir(&mine).unwrap();
        std::fs::set_permissions(&mine, std::fs::Permissions::from_mode(0o700)).unwrap();
        assert_eq!(ensure_private_dir(&mine).unwrap(), None);

        // What whtunnel creates is private, parents included.
        let new = tmp.path().join("a/b");
        assert_eq!(ensure_private_dir(&new).unwrap(), None);
        assert_eq!(mode(&new), 0o700);
        assert_eq!(mode(&tmp.path().join("a")), 0o700);
    }
}
