//! Atomic file writes: temporary file in the same folder, fsync, rename.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};

pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| {
        write_error(e, path).context(format!(
            "cannot create a temporary file in {}",
            dir.display()
        ))
    })?;
    // Temporary files are private (0600); the result should read like any
    // file the user makes: the replaced file's mode, else rw-r--r--.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)
            .map(|m| m.permissions().mode())
            .unwrap_or(0o644);
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("cannot set the permissions of {}", path.display()))?;
    }
    // Through the file itself: NamedTempFile's own errors name the
    // temporary file, which the user never sees.
    tmp.as_file_mut()
        .write_all(bytes)
        .and_then(|_| tmp.as_file().sync_all())
        .map_err(|e| write_error(e, path))?;
    tmp.persist(path).map_err(|e| {
        write_error(e.error, path).context(format!(
            "cannot move the new file into place at {}",
            path.display()
        ))
    })?;
    Ok(())
}

/// A failed write of `path`, saying what to do where the cause is the
/// disk's rather than the program's. The file, if it was there, is as it was.
pub fn write_error(error: std::io::Error, path: &Path) -> anyhow::Error {
    use std::io::ErrorKind;
    let advice = match error.kind() {
        ErrorKind::StorageFull | ErrorKind::QuotaExceeded => "the disk is full (free some space)",
        ErrorKind::ReadOnlyFilesystem => "the disk is read-only",
        ErrorKind::PermissionDenied => "check who owns the folder",
        _ => "",
    };
    let what = format!("cannot write {}", path.display());
    if advice.is_empty() {
        anyhow::Error::new(error).context(what)
    } else {
        anyhow::Error::new(error).context(format!("{what}: {advice}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_file_whole_and_keeps_it_readable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.txt");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o644
            );
        }
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temporary file left"
        );
    }

    #[test]
    fn a_full_disk_is_named_with_what_to_do() {
        let full = std::io::Error::from_raw_os_error(28); // ENOSPC
        let message = format!(
            "{:#}",
            write_error(full, Path::new("runs/000001/image.png"))
        );
        assert!(
            message.starts_with(
                "cannot write runs/000001/image.png: the disk is full (free some space)"
            ),
            "{message}"
        );
    }
}
