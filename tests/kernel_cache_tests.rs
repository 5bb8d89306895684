//! The on-disk cache of compiled CUDA kernels: entries round-trip, and a corrupt, truncated,
//! foreign or stale entry is never trusted. Runs without a GPU (the cache stores PTX text).

use std::path::PathBuf;

use lazy_kernels::backend::cuda::cache::{CACHE_DIR_VAR, DiskCache};

fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("lk-cache-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

const PTX: &str = ".version 8.0\n.target sm_90\n// a kernel\n";

#[test]
fn entries_round_trip_and_are_keyed_by_kernel_arch_and_source() {
    let dir = scratch("roundtrip");
    let c = DiskCache::at(&dir);
    assert_eq!(c.load("lk_a", "compute_90", "src"), None, "empty cache");
    c.store("lk_a", "compute_90", "src", PTX).unwrap();
    assert_eq!(c.load("lk_a", "compute_90", "src").as_deref(), Some(PTX));
    // Another architecture, kernel or source is a miss.
    assert_eq!(c.load("lk_a", "compute_80", "src"), None);
    assert_eq!(c.load("lk_b", "compute_90", "src"), None);
    assert_eq!(c.load("lk_a", "compute_90", "other source"), None);
    // Rewriting replaces the entry atomically and leaves no temporary file behind.
    c.store("lk_a", "compute_90", "src", "second").unwrap();
    assert_eq!(
        c.load("lk_a", "compute_90", "src").as_deref(),
        Some("second")
    );
    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
    assert!(names[0].ends_with(".ptx") && names[0].contains(env!("CARGO_PKG_VERSION")));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn corrupt_truncated_and_foreign_entries_are_rejected() {
    let dir = scratch("corrupt");
    let c = DiskCache::at(&dir);
    c.store("lk_a", "compute_90", "src", PTX).unwrap();
    let path = c.path("lk_a", "compute_90");
    let good = std::fs::read_to_string(&path).unwrap();

    // Truncated.
    std::fs::write(&path, &good[..good.len() - 5]).unwrap();
    assert_eq!(c.load("lk_a", "compute_90", "src"), None);
    // One byte of the PTX changed.
    std::fs::write(&path, good.replace("sm_90", "sm_91")).unwrap();
    assert_eq!(c.load("lk_a", "compute_90", "src"), None);
    // No header at all, empty, and binary junk.
    std::fs::write(&path, PTX).unwrap();
    assert_eq!(c.load("lk_a", "compute_90", "src"), None);
    std::fs::write(&path, "").unwrap();
    assert_eq!(c.load("lk_a", "compute_90", "src"), None);
    std::fs::write(&path, [0xffu8, 0xfe, 0, 1, 2]).unwrap();
    assert_eq!(c.load("lk_a", "compute_90", "src"), None);
    // An entry written by another version of the crate (same file name forced).
    let foreign = good.replacen(env!("CARGO_PKG_VERSION"), "0.0.0-other", 1);
    std::fs::write(&path, foreign).unwrap();
    assert_eq!(c.load("lk_a", "compute_90", "src"), None);
    // A fresh store repairs the entry.
    c.store("lk_a", "compute_90", "src", PTX).unwrap();
    assert_eq!(c.load("lk_a", "compute_90", "src").as_deref(), Some(PTX));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_environment_relocates_or_disables_the_cache() {
    // The only test of this binary that touches the environment.
    // SAFETY (the three calls below): the other tests of this binary run on parallel threads but
    // read the environment only through `std::env`, which serialises with these calls; no C
    // code of this binary reads it.
    let dir = scratch("env");
    unsafe { std::env::set_var(CACHE_DIR_VAR, &dir) };
    assert_eq!(DiskCache::from_env().unwrap().dir(), dir.as_path());
    unsafe { std::env::set_var(CACHE_DIR_VAR, "") };
    assert!(
        DiskCache::from_env().is_none(),
        "an empty value disables the disk cache"
    );
    unsafe { std::env::remove_var(CACHE_DIR_VAR) };
    if let Some(c) = DiskCache::from_env() {
        assert!(c.dir().ends_with("lazy-kernels"), "{}", c.dir().display());
    }
    // A directory that cannot be created makes `store` fail without panicking.
    let file = scratch("not-a-dir");
    std::fs::write(&file, "x").unwrap();
    let c = DiskCache::at(&file.join("sub"));
    assert!(c.store("lk_a", "compute_90", "src", PTX).is_err());
    assert_eq!(c.load("lk_a", "compute_90", "src"), None);
    std::fs::remove_file(&file).unwrap();
}
