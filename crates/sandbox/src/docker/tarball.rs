//! Tar streams into and out of containers: a host directory streamed as a tar body (built on
//! a blocking thread, never held whole in memory), one file as a tar, a file read from a tar.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures::stream::{self, Stream, StreamExt};

use crate::SandboxError;

/// Chunk size of streamed tar bodies.
const CHUNK: usize = 256 * 1024;

/// Decides whether a path (relative to the tree's root) is left out of the tar.
pub(crate) type Exclude = fn(&Path) -> bool;

/// Streams `src` as a tar whose entries are `dest_prefix/<relative path>` (no leading `/`;
/// an empty prefix puts the tree's contents at the upload target itself). Symlinks stay
/// symlinks; sockets are skipped. An error while reading the tree ends the stream with it.
pub(crate) fn dir_stream(
    src: PathBuf,
    dest_prefix: PathBuf,
    exclude: Option<Exclude>,
) -> impl Stream<Item = Result<Bytes, io::Error>> + Send + 'static {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, io::Error>>(8);
    tokio::task::spawn_blocking(move || {
        let writer = ChannelWriter { tx: tx.clone(), buf: Vec::with_capacity(CHUNK) };
        let result = (|| -> io::Result<()> {
            let mut builder = tar::Builder::new(writer);
            builder.follow_symlinks(false);
            append_tree(&mut builder, &src, Path::new(""), &dest_prefix, exclude)?;
            let mut writer = builder.into_inner()?;
            writer.flush()
        })();
        if let Err(e) = result {
            let _ = tx.blocking_send(Err(io::Error::new(e.kind(), format!("archiving {}: {e}", src.display()))));
        }
    });
    stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) })
}

fn append_tree<W: Write>(
    builder: &mut tar::Builder<W>,
    root: &Path,
    rel: &Path,
    dest_prefix: &Path,
    exclude: Option<Exclude>,
) -> io::Result<()> {
    let dir = root.join(rel);
    let mut entries: Vec<_> = std::fs::read_dir(&dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let rel_path = rel.join(entry.file_name());
        if exclude.is_some_and(|f| f(&rel_path)) {
            continue;
        }
        let meta = std::fs::symlink_metadata(entry.path())?;
        let file_type = meta.file_type();
        {
            use std::os::unix::fs::FileTypeExt;
            if file_type.is_socket() {
                continue;
            }
        }
        builder.append_path_with_name(entry.path(), dest_prefix.join(&rel_path))?;
        if file_type.is_dir() {
            append_tree(builder, root, &rel_path, dest_prefix, exclude)?;
        }
    }
    Ok(())
}

/// A `Write` that forwards fixed-size chunks to an async channel (used on a blocking thread).
struct ChannelWriter {
    tx: tokio::sync::mpsc::Sender<Result<Bytes, io::Error>>,
    buf: Vec<u8>,
}

impl ChannelWriter {
    fn send_buf(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
        self.tx.blocking_send(Ok(chunk)).map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the upload stopped reading the tar stream"))
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.send_buf()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send_buf()
    }
}

/// Streams a file from disk in chunks (for image imports).
pub(crate) fn file_stream(path: PathBuf) -> impl Stream<Item = Result<Bytes, io::Error>> + Send + 'static {
    use tokio::io::AsyncReadExt;
    stream::once(async move { tokio::fs::File::open(&path).await })
        .map(|opened| {
            stream::try_unfold(opened, |file| async move {
                let mut file = file?;
                let mut buf = vec![0u8; CHUNK];
                let n = file.read(&mut buf).await?;
                if n == 0 {
                    return Ok(None);
                }
                buf.truncate(n);
                Ok(Some((Bytes::from(buf), Ok(file))))
            })
        })
        .flatten()
}

/// A tar holding one regular file at `name` (relative) with mode 0644.
pub(crate) fn single_file_tar(name: &Path, contents: &[u8]) -> Result<Vec<u8>, SandboxError> {
    let mut builder = tar::Builder::new(Vec::with_capacity(contents.len() + 1024));
    let mut header = tar::Header::new_gnu();
    header.set_size(contents.len() as u64);
    header.set_mode(0o644);
    header.set_mtime(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0));
    header.set_entry_type(tar::EntryType::Regular);
    builder
        .append_data(&mut header, name, contents)
        .and_then(|_| builder.into_inner())
        .map_err(|e| SandboxError::io(format!("building a tar for {}", name.display()), e))
}

/// The contents of the first regular file in a tar (what the archive endpoint returns for a file).
pub(crate) fn first_file_from_tar(tar_bytes: &[u8], what: &str) -> Result<Vec<u8>, SandboxError> {
    let mut archive = tar::Archive::new(tar_bytes);
    let entries = archive.entries().map_err(|e| SandboxError::io(format!("reading the tar of {what}"), e))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| SandboxError::io(format!("reading the tar of {what}"), e))?;
        match entry.header().entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                let mut out = Vec::with_capacity(entry.size() as usize);
                entry.read_to_end(&mut out).map_err(|e| SandboxError::io(format!("reading {what} from its tar"), e))?;
                return Ok(out);
            }
            tar::EntryType::Directory => {
                return Err(SandboxError::Other(format!("{what} is a directory, not a file")));
            }
            _ => continue,
        }
    }
    Err(SandboxError::Other(format!("{what}: no regular file in the archive the container returned")))
}
