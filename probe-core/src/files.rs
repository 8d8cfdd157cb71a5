//! Files toktrace writes outside a process directory it has just made: the
//! trace index, exports, the user cache.
//!
//! Such a path may sit in a directory other users can write to, or already
//! hold someone else's file. So a file is written whole under a fresh, unique
//! name beside its destination (created exclusively: a symlink planted at that
//! name makes the creation fail instead of being followed) and renamed over
//! the destination, which replaces a symlink there rather than writing through
//! it. A reader never sees half a file. A destination owned by another user is
//! never replaced: on a machine where toktrace runs as root, a file another
//! user owns is theirs even though root could overwrite it, so ownership is
//! checked by uid, not by permission.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// The effective uid of this process.
pub fn effective_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// An exclusive advisory lock (`flock`) on a lock file, held until dropped:
/// another process taking the same lock waits. The file is created if
/// missing, never through a symlink planted at its path.
#[derive(Debug)]
pub struct FileLock {
    _file: File,
}

impl FileLock {
    /// Wait for the lock on `path` and take it.
    pub fn acquire(path: &Path) -> io::Result<FileLock> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o666)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)?;
        loop {
            // SAFETY: flock on a descriptor this function owns; no memory is
            // passed. The lock goes with the descriptor when `File` drops.
            let rc = unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&file), libc::LOCK_EX) };
            if rc == 0 {
                return Ok(FileLock { _file: file });
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
    }
}

/// The uid owning `path` when it is not this process's (the path itself, not
/// what a symlink there points to). `None` when it is ours or does not exist.
pub fn foreign_owner(path: &Path) -> Option<u32> {
    let uid = std::fs::symlink_metadata(path).ok()?.uid();
    (uid != effective_uid()).then_some(uid)
}

/// A file being written aside, put in place by [`PendingFile::commit`].
/// Dropped without a commit, it removes what it wrote.
pub struct PendingFile {
    file: Option<File>,
    tmp: PathBuf,
    dest: PathBuf,
}

static SERIAL: AtomicU64 = AtomicU64::new(0);

impl PendingFile {
    /// Start writing `dest` (created with `mode`, less the umask). Fails at
    /// once when `dest` is a directory or another user's file, so nothing is
    /// written for a destination that will be refused.
    pub fn create(dest: &Path, mode: u32) -> io::Result<PendingFile> {
        check_destination(dest)?;
        let name = dest
            .file_name()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
        let parent = dest.parent().unwrap_or(Path::new(""));
        let mut attempts = 0;
        loop {
            let serial = SERIAL.fetch_add(1, Ordering::Relaxed);
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
            let mut tmp_name = std::ffi::OsString::from(".");
            tmp_name.push(name);
            tmp_name.push(format!(".{}.{serial}.{nanos:x}.tmp", std::process::id()));
            let tmp = parent.join(tmp_name);
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&tmp)
            {
                Ok(file) => {
                    return Ok(PendingFile {
                        file: Some(file),
                        tmp,
                        dest: dest.to_path_buf(),
                    })
                }
                // Someone holds that name (planted or a coincidence): another name.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempts < 8 => {
                    attempts += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Where the file will end up.
    pub fn destination(&self) -> &Path {
        &self.dest
    }

    /// Put the file in place: flushed to the kernel, then renamed over the
    /// destination (unless that became another user's file meanwhile).
    pub fn commit(mut self) -> io::Result<()> {
        if let Some(mut file) = self.file.take() {
            file.flush()?;
        }
        check_destination(&self.dest)?;
        std::fs::rename(&self.tmp, &self.dest)?;
        self.tmp = PathBuf::new();
        Ok(())
    }
}

impl Write for PendingFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.file {
            Some(f) => f.write(buf),
            None => Err(io::Error::other("file already committed")),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.file {
            Some(f) => f.flush(),
            None => Ok(()),
        }
    }
}

impl Drop for PendingFile {
    fn drop(&mut self) {
        self.file = None;
        if !self.tmp.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Write `bytes` to `dest` whole, aside and renamed (see the module).
pub fn write_atomically(dest: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let mut pending = PendingFile::create(dest, mode)?;
    pending.write_all(bytes)?;
    pending.commit()
}

fn check_destination(dest: &Path) -> io::Result<()> {
    if let Ok(meta) = std::fs::symlink_metadata(dest) {
        if meta.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::IsADirectory,
                format!("{} is a directory", dest.display()),
            ));
        }
        if meta.uid() != effective_uid() {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "{} belongs to uid {}: toktrace does not replace another user's file",
                    dest.display(),
                    meta.uid()
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lock_waits_for_its_holder() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.lock");
        let held = FileLock::acquire(&path).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = {
            let path = path.clone();
            std::thread::spawn(move || {
                let _lock = FileLock::acquire(&path).unwrap();
                tx.send(()).unwrap();
            })
        };
        // The waiter cannot have the lock while it is held here (a lost
        // wake-up would only make this test wait, never pass wrongly).
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert!(rx.try_recv().is_err(), "taken while held");
        drop(held);
        rx.recv().unwrap();
        waiter.join().unwrap();
    }

    #[test]
    fn a_lock_is_never_taken_through_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("elsewhere");
        std::fs::write(&target, b"keep").unwrap();
        let path = dir.path().join("x.lock");
        std::os::unix::fs::symlink(&target, &path).unwrap();
        assert!(FileLock::acquire(&path).is_err());
    }

    #[test]
    fn a_file_is_written_whole_and_nothing_is_left_beside_it() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out.bin");
        write_atomically(&dest, b"first", 0o600).unwrap();
        write_atomically(&dest, b"second", 0o600).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"second");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn a_dropped_pending_file_leaves_no_trace_and_the_old_file_stands() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out.bin");
        std::fs::write(&dest, b"old").unwrap();
        let mut p = PendingFile::create(&dest, 0o644).unwrap();
        p.write_all(b"half").unwrap();
        drop(p);
        assert_eq!(std::fs::read(&dest).unwrap(), b"old");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_symlink_at_the_destination_is_replaced_not_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        let dest = dir.path().join("out.bin");
        std::os::unix::fs::symlink(&victim, &dest).unwrap();
        write_atomically(&dest, b"export", 0o600).unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert!(!std::fs::symlink_metadata(&dest)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(std::fs::read(&dest).unwrap(), b"export");
    }

    #[test]
    fn a_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let err = write_atomically(dir.path(), b"x", 0o600).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::IsADirectory);
    }

    #[test]
    fn the_mode_is_the_one_asked_for() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("index");
        write_atomically(&dest, b"x", 0o600).unwrap();
        let mode = std::fs::metadata(&dest).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
