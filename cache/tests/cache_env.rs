//! Environment precedence of the runtime cache directory. Alone in its own
//! test binary because it changes the process environment (TMPDIR among
//! others), which parallel tests creating temporary files would notice.

use std::fs;
use std::path::Path;

use supermin_cache::{runtime_cache_dir, BaseOrigin};

#[test]
fn environment_precedence_is_cachedir_then_tmpdir_then_var_tmp() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let name = format!(".guestfs-{}", rustix::process::geteuid().as_raw());
    std::env::set_var("LIBGUESTFS_CACHEDIR", a.path());
    std::env::set_var("TMPDIR", b.path());
    assert_eq!(
        runtime_cache_dir(|n| std::env::var_os(n)).unwrap(),
        fs::canonicalize(a.path()).unwrap().join(&name)
    );
    std::env::remove_var("LIBGUESTFS_CACHEDIR");
    assert_eq!(
        runtime_cache_dir(|n| std::env::var_os(n)).unwrap(),
        fs::canonicalize(b.path()).unwrap().join(&name)
    );
    std::env::set_var("LIBGUESTFS_CACHEDIR", "");
    assert_eq!(
        runtime_cache_dir(|n| std::env::var_os(n)).unwrap(),
        fs::canonicalize(b.path()).unwrap().join(&name)
    );
    std::env::remove_var("LIBGUESTFS_CACHEDIR");
    std::env::remove_var("TMPDIR");
    let default = supermin_cache::cache_base_from(|n| std::env::var_os(n));
    assert_eq!(
        default,
        (Path::new("/var/tmp").to_path_buf(), BaseOrigin::Default)
    );
}
