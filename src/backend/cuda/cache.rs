//! The on-disk cache of compiled kernels (PTX), shared by processes.
//!
//! An entry is one file named by the kernel, the architecture and the crate version. Its first
//! line repeats that key with hashes of the generated source and of the PTX, so an entry that
//! was truncated, edited, or written for another source (a hash collision of names) is
//! detected and recompiled, never trusted. Entries are written to a temporary file and renamed
//! into place, so readers never see a partial file.
//!
//! The directory is `$LAZY_KERNELS_CACHE_DIR` when set (an empty value turns the disk cache
//! off), else `$XDG_CACHE_HOME/lazy-kernels`, else `$HOME/.cache/lazy-kernels`.
//!
//! ```
//! use lazy_kernels::backend::cuda::cache::DiskCache;
//! let dir = std::env::temp_dir().join(format!("lk-doc-cache-{}", std::process::id()));
//! let cache = DiskCache::at(&dir);
//! cache.store("lk_0123", "compute_90", "source", "ptx text")?;
//! assert_eq!(cache.load("lk_0123", "compute_90", "source").as_deref(), Some("ptx text"));
//! assert_eq!(cache.load("lk_0123", "compute_90", "other source"), None);
//! # std::fs::remove_dir_all(&dir)?;
//! # Ok::<(), std::io::Error>(())
//! ```

use std::io::Write;
use std::path::{Path, PathBuf};

use super::codegen::fnv1a;

/// The environment variable that relocates (or, empty, disables) the disk cache.
pub const CACHE_DIR_VAR: &str = "LAZY_KERNELS_CACHE_DIR";

const VERSION: &str = env!("CARGO_PKG_VERSION");

/// A directory of cached PTX.
#[derive(Clone, Debug)]
pub struct DiskCache {
    dir: PathBuf,
}

impl DiskCache {
    /// The user's cache (see the module documentation), or `None` when it is disabled or no
    /// directory can be named.
    pub fn from_env() -> Option<DiskCache> {
        let dir = match std::env::var_os(CACHE_DIR_VAR) {
            Some(d) if d.is_empty() => return None,
            Some(d) => PathBuf::from(d),
            None => match std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
                Some(x) => PathBuf::from(x).join("lazy-kernels"),
                None => PathBuf::from(std::env::var_os("HOME")?)
                    .join(".cache")
                    .join("lazy-kernels"),
            },
        };
        Some(DiskCache { dir })
    }

    /// A cache in `dir` (created at the first store).
    pub fn at(dir: &Path) -> DiskCache {
        DiskCache {
            dir: dir.to_path_buf(),
        }
    }

    /// The cache's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file of an entry.
    pub fn path(&self, name: &str, arch: &str) -> PathBuf {
        self.dir.join(format!("{name}-{arch}-v{VERSION}.ptx"))
    }

    fn header(name: &str, arch: &str, source: &str, ptx: &str) -> String {
        format!(
            "// lazy-kernels {VERSION} {name} {arch} source {:016x} ptx {:016x} {}\n",
            fnv1a(source.as_bytes()),
            fnv1a(ptx.as_bytes()),
            ptx.len()
        )
    }

    /// The PTX cached for this kernel, architecture and source; `None` when there is no entry
    /// or it does not check out.
    pub fn load(&self, name: &str, arch: &str, source: &str) -> Option<String> {
        let text = std::fs::read_to_string(self.path(name, arch)).ok()?;
        let (head, ptx) = text.split_once('\n')?;
        (format!("{head}\n") == Self::header(name, arch, source, ptx)).then(|| ptx.to_string())
    }

    /// Writes an entry atomically (a temporary file renamed into place).
    pub fn store(&self, name: &str, arch: &str, source: &str, ptx: &str) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let path = self.path(name, arch);
        // A name no other store uses at the same time: the process, and a counter within it
        // (two threads of one process storing the same entry get different files).
        static STORES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let count = STORES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = path.with_extension(format!("tmp{}-{count}", std::process::id()));
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(Self::header(name, arch, source, ptx).as_bytes())?;
            f.write_all(ptx.as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)
        };
        let r = write();
        if r.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        r
    }

    /// Writes the generated source next to the entries (for compile errors and inspection);
    /// returns its path.
    pub fn write_source(&self, name: &str, source: &str) -> std::io::Result<PathBuf> {
        std::fs::create_dir_all(&self.dir)?;
        let path = self.dir.join(format!("{name}.cu"));
        std::fs::write(&path, source)?;
        Ok(path)
    }
}
