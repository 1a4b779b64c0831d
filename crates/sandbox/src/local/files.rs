//! Host-side reads and writes of sandbox files that a sandboxed process cannot redirect.
//!
//! A sandbox's host dir holds `testbed/` and `tmp/`, bound at `/testbed` and `/tmp`.
//! Paths are resolved with `openat2(RESOLVE_IN_ROOT)` from that dir, so symlinks made inside
//! the sandbox resolve as they would in there (an absolute link `/testbed/x` lands in
//! `testbed/x`) and can never lead to a host file outside the dir (a link to `/etc/passwd`
//! finds nothing).

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use crate::{SandboxError, TESTBED};

/// The dirs under a sandbox's host dir that sandbox paths may name.
pub(crate) const WRITABLE_ROOTS: [&str; 2] = ["testbed", "tmp"];

/// `/testbed/a/b` → `testbed/a/b`; anything outside `/testbed` and `/tmp`, relative, or
/// with `..` is refused.
pub(crate) fn sandbox_rel_path(path: &str) -> Result<PathBuf, SandboxError> {
    let refuse = |why: &str| {
        SandboxError::Other(format!(
            "sandbox path {path:?} {why}: only files under {TESTBED} or /tmp can be read or written"
        ))
    };
    let p = Path::new(path);
    if !p.is_absolute() {
        return Err(refuse("is not absolute"));
    }
    let mut rel = PathBuf::new();
    for c in p.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(name) => rel.push(name),
            Component::ParentDir => return Err(refuse("contains `..`")),
            Component::Prefix(_) => return Err(refuse("is not a unix path")),
        }
    }
    let mut comps = rel.components();
    let first = comps.next().and_then(|c| c.as_os_str().to_str());
    if !first.is_some_and(|f| WRITABLE_ROOTS.contains(&f)) {
        return Err(refuse("is outside the writable dirs"));
    }
    if comps.next().is_none() {
        return Err(refuse("names a directory"));
    }
    Ok(rel)
}

#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

/// `openat2(root, rel, flags, mode)` with `RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS`.
fn open_in_root(root: BorrowedFd<'_>, rel: &Path, flags: libc::c_int, mode: u32) -> io::Result<OwnedFd> {
    let c_path = CString::new(rel.as_os_str().as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let creates = flags & (libc::O_CREAT | libc::O_TMPFILE) != 0;
    let how = OpenHow {
        flags: (flags | libc::O_CLOEXEC) as u64,
        mode: if creates { u64::from(mode) } else { 0 },
        resolve: libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS,
    };
    loop {
        // SAFETY: all pointers point at live values of the sizes given.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                root.as_raw_fd(),
                c_path.as_ptr(),
                &how as *const OpenHow,
                std::mem::size_of::<OpenHow>(),
            )
        };
        if fd >= 0 {
            // SAFETY: the kernel just handed us this descriptor.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) });
        }
        let err = io::Error::last_os_error();
        // EAGAIN: a concurrent rename raced the lookup; the kernel asks to retry.
        if !matches!(err.raw_os_error(), Some(libc::EINTR) | Some(libc::EAGAIN)) {
            return Err(err);
        }
    }
}

fn open_root(root: &Path) -> io::Result<OwnedFd> {
    let f = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_DIRECTORY).open(root)?;
    Ok(OwnedFd::from(f))
}

fn ensure_regular(file: &File, rel: &Path) -> io::Result<()> {
    if !file.metadata()?.file_type().is_file() {
        return Err(io::Error::other(format!("{} is not a regular file", rel.display())));
    }
    Ok(())
}

/// Reads `root/rel` (resolved inside `root`).
pub(crate) fn read_in_root(root: &Path, rel: &Path) -> io::Result<Vec<u8>> {
    let root_fd = open_root(root)?;
    // O_NONBLOCK: a FIFO planted by the sandbox must not hang us.
    let fd = open_in_root(root_fd.as_fd(), rel, libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY, 0)?;
    let mut file = File::from(fd);
    ensure_regular(&file, rel)?;
    let mut out = Vec::new();
    file.read_to_end(&mut out)?;
    Ok(out)
}

/// Writes `root/rel` (resolved inside `root`), creating missing parent dirs.
pub(crate) fn write_in_root(root: &Path, rel: &Path, contents: &[u8]) -> io::Result<()> {
    let root_fd = open_root(root)?;
    let root_b = root_fd.as_fd();
    if let Some(parent) = rel.parent() {
        let mut prefix = PathBuf::new();
        for comp in parent.components() {
            let name = comp.as_os_str();
            let dir_fd = if prefix.as_os_str().is_empty() {
                open_in_root(root_b, Path::new("."), libc::O_PATH | libc::O_DIRECTORY, 0)?
            } else {
                open_in_root(root_b, &prefix, libc::O_PATH | libc::O_DIRECTORY, 0)?
            };
            prefix.push(name);
            match open_in_root(root_b, &prefix, libc::O_PATH | libc::O_DIRECTORY, 0) {
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    let c_name = CString::new(name.as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
                    // SAFETY: dir_fd is a live directory fd, c_name a valid C string.
                    if unsafe { libc::mkdirat(dir_fd.as_raw_fd(), c_name.as_ptr(), 0o755) } != 0 {
                        let err = io::Error::last_os_error();
                        if err.kind() != io::ErrorKind::AlreadyExists {
                            return Err(err);
                        }
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }
    let fd = open_in_root(
        root_b,
        rel,
        libc::O_WRONLY | libc::O_CREAT | libc::O_NONBLOCK | libc::O_NOCTTY,
        0o644,
    )?;
    let mut file = File::from(fd);
    ensure_regular(&file, rel)?;
    file.set_len(0)?;
    file.write_all(contents)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sandbox_paths_are_checked() {
        assert_eq!(sandbox_rel_path("/testbed/a/b.py").unwrap(), PathBuf::from("testbed/a/b.py"));
        assert_eq!(sandbox_rel_path("/tmp//x").unwrap(), PathBuf::from("tmp/x"));
        assert_eq!(sandbox_rel_path("/testbed/./a").unwrap(), PathBuf::from("testbed/a"));
        for bad in ["/etc/passwd", "testbed/a", "/testbed/../etc/passwd", "/testbed", "/", "/opt/venv/x", "/tmpx/a"] {
            let e = sandbox_rel_path(bad).unwrap_err().to_string();
            assert!(e.contains("only files under /testbed or /tmp"), "{bad}: {e}");
        }
    }

    #[test]
    fn symlinks_stay_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("testbed/sub")).unwrap();
        std::fs::write(root.join("testbed/sub/real.txt"), b"inside").unwrap();
        std::os::unix::fs::symlink("/etc/hostname", root.join("testbed/escape")).unwrap();
        std::os::unix::fs::symlink("/testbed/sub/real.txt", root.join("testbed/abs")).unwrap();
        std::os::unix::fs::symlink("../../..", root.join("testbed/sub/up")).unwrap();

        assert_eq!(read_in_root(root, Path::new("testbed/abs")).unwrap(), b"inside");
        assert!(read_in_root(root, Path::new("testbed/escape")).is_err());
        // Writing through a link to a host path creates the file inside the root instead.
        std::fs::create_dir(root.join("etc")).unwrap();
        write_in_root(root, Path::new("testbed/escape"), b"x").unwrap();
        assert_eq!(std::fs::read(root.join("etc/hostname")).unwrap(), b"x");
        write_in_root(root, Path::new("testbed/sub/up/tmp/made/deep.txt"), b"y").unwrap();
        assert_eq!(std::fs::read(root.join("tmp/made/deep.txt")).unwrap(), b"y");
        write_in_root(root, Path::new("testbed/new/dir/f.txt"), b"z").unwrap();
        assert_eq!(read_in_root(root, Path::new("testbed/new/dir/f.txt")).unwrap(), b"z");
        assert!(read_in_root(root, Path::new("testbed/sub")).is_err());
    }
}
