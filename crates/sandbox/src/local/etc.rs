//! The `/etc` a local sandbox sees: a copy of the host's holding only what every host user
//! may read (files with the read bit for others, folders with read and search for others).
//!
//! The sandbox's user is the host user that runs swegym, mapped into a user namespace; when
//! that is root (containers, CI), a bind of the host's `/etc` would let an agent or a
//! `model_patch` read `/etc/shadow`, private TLS keys and service credentials, since file
//! ownership still grants root's permissions. A filtered copy keeps what programs need
//! (`passwd`, `group`, `hosts`, `ld.so.cache`, `ssl/certs`, alternatives, locale and
//! timezone links) and nothing an unprivileged host user could not read anyway. Symbolic
//! links are copied as links (a link to a dropped file dangles).

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

/// Read permission for others.
const OTHER_READ: u32 = 0o004;
/// Read and search permission for others (a folder others can list and enter).
const OTHER_READ_SEARCH: u32 = 0o005;

/// What [`copy_public`] copied and what it left out.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct EtcCopy {
    pub copied: usize,
    pub left_out: usize,
}

/// Copies the world-readable part of `src` into `dst` (which must not exist). An entry that
/// cannot be read is left out (counted), never an error; only making `dst` can fail.
pub(crate) fn copy_public(src: &Path, dst: &Path) -> std::io::Result<EtcCopy> {
    std::fs::create_dir(dst)?;
    std::fs::set_permissions(dst, std::fs::Permissions::from_mode(0o755))?;
    let mut counts = EtcCopy::default();
    copy_dir(src, dst, &mut counts);
    Ok(counts)
}

fn copy_dir(src: &Path, dst: &Path, counts: &mut EtcCopy) {
    let Ok(entries) = std::fs::read_dir(src) else {
        counts.left_out += 1;
        return;
    };
    for entry in entries.flatten() {
        let (from, to) = (entry.path(), dst.join(entry.file_name()));
        let Ok(meta) = std::fs::symlink_metadata(&from) else {
            counts.left_out += 1;
            continue;
        };
        let mode = meta.mode() & 0o7777;
        let ok = if meta.file_type().is_symlink() {
            std::fs::read_link(&from).and_then(|target| std::os::unix::fs::symlink(target, &to)).is_ok()
        } else if meta.is_dir() && mode & OTHER_READ_SEARCH == OTHER_READ_SEARCH {
            let made = std::fs::create_dir(&to).and_then(|()| std::fs::set_permissions(&to, std::fs::Permissions::from_mode(mode)));
            if made.is_ok() {
                copy_dir(&from, &to, counts);
            }
            made.is_ok()
        } else if meta.is_file() && mode & OTHER_READ == OTHER_READ {
            std::fs::copy(&from, &to).is_ok()
        } else {
            false // not readable by others, or not a file, folder or link (sockets, fifos)
        };
        if ok {
            counts.copied += 1;
        } else {
            counts.left_out += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path, m: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(m)).unwrap();
    }

    #[test]
    fn keeps_only_what_others_may_read() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("etc");
        std::fs::create_dir_all(src.join("ssl/private")).unwrap();
        std::fs::create_dir_all(src.join("ssl/certs")).unwrap();
        for (name, m) in [("passwd", 0o644), ("shadow", 0o640), ("ssl/certs/ca.pem", 0o644), ("ssl/private/key.pem", 0o600)] {
            std::fs::write(src.join(name), name).unwrap();
            mode(&src.join(name), m);
        }
        mode(&src.join("ssl/private"), 0o710);
        std::os::unix::fs::symlink("/usr/share/zoneinfo/UTC", src.join("localtime")).unwrap();
        std::os::unix::fs::symlink("shadow", src.join("shadow-link")).unwrap();

        let dst = tmp.path().join("public");
        let counts = copy_public(&src, &dst).unwrap();
        assert_eq!(std::fs::read_to_string(dst.join("passwd")).unwrap(), "passwd");
        assert_eq!(std::fs::read_to_string(dst.join("ssl/certs/ca.pem")).unwrap(), "ssl/certs/ca.pem");
        assert!(!dst.join("shadow").exists() && !dst.join("ssl/private").exists());
        assert_eq!(std::fs::read_link(dst.join("localtime")).unwrap(), Path::new("/usr/share/zoneinfo/UTC"));
        assert!(std::fs::symlink_metadata(dst.join("shadow-link")).unwrap().file_type().is_symlink());
        assert!(!dst.join("shadow-link").exists(), "the link to a dropped file dangles");
        assert_eq!(std::fs::metadata(dst.join("passwd")).unwrap().mode() & 0o777, 0o644);
        // passwd, ssl, ssl/certs, ca.pem, localtime, shadow-link; shadow and ssl/private out.
        assert_eq!(counts, EtcCopy { copied: 6, left_out: 2 });
        assert!(copy_public(&src, &dst).is_err(), "dst must not exist");
    }
}
