//! `--lock`: concurrent builders of one output take turns, and the ones that
//! come second find the output fresh and build nothing.

use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use supermin_cache::{
    clean_debris, is_fresh, lock, try_lock, Durability, Fingerprint, FingerprintBuilder, Staging,
    APPLIANCE_FILES,
};

fn fp() -> Fingerprint {
    let mut b = FingerprintBuilder::new("test");
    b.str("inputs", "same for everyone");
    b.finish()
}

/// One `supermin --build --if-newer --lock`, as the builder does it.
fn build_if_newer(out: &Path, lockfile: &Path, built: &AtomicUsize, skipped: &AtomicUsize) {
    let _lock = lock(lockfile).unwrap();
    if is_fresh(out, &fp(), &APPLIANCE_FILES).unwrap().is_fresh() {
        skipped.fetch_add(1, Ordering::SeqCst);
        return;
    }
    clean_debris(out).unwrap();
    let s = Staging::new(out).unwrap();
    for name in APPLIANCE_FILES {
        fs::write(s.path().join(name), name).unwrap();
    }
    // Long enough that an unserialized builder would check freshness while
    // this one is still building, and build too.
    std::thread::sleep(Duration::from_millis(100));
    s.commit(&fp(), "test", Durability::Unsynced).unwrap();
    built.fetch_add(1, Ordering::SeqCst);
}

#[test]
fn concurrent_builders_serialize_and_only_the_first_builds() {
    let d = tempfile::tempdir().unwrap();
    let out = Arc::new(d.path().join("appliance.d"));
    let lockfile = Arc::new(d.path().join("lock"));
    let built = Arc::new(AtomicUsize::new(0));
    let skipped = Arc::new(AtomicUsize::new(0));
    let n = 4;
    let barrier = Arc::new(Barrier::new(n));
    let threads: Vec<_> = (0..n)
        .map(|_| {
            let (out, lockfile, built, skipped, barrier) = (
                out.clone(),
                lockfile.clone(),
                built.clone(),
                skipped.clone(),
                barrier.clone(),
            );
            std::thread::spawn(move || {
                barrier.wait();
                build_if_newer(&out, &lockfile, &built, &skipped);
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(built.load(Ordering::SeqCst), 1);
    assert_eq!(skipped.load(Ordering::SeqCst), n - 1);
    assert!(is_fresh(&out, &fp(), &APPLIANCE_FILES).unwrap().is_fresh());
}

/// Forks a child that takes a POSIX record lock on `path` the way supermin 5
/// does (`lockf(F_LOCK)`), reports through a pipe, and waits to be killed.
fn fork_posix_locker(path: &Path) -> libc::pid_t {
    let cpath = CString::new(path.as_os_str().as_bytes()).unwrap();
    let mut fds = [0; 2];
    // SAFETY: fds is a valid array of two ints for pipe(2) to fill.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: the child calls only async-signal-safe functions (open, fcntl,
    // write, pause, _exit) on memory prepared before the fork.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        // SAFETY: see above; every pointer is valid for the call.
        unsafe {
            let fd = libc::open(cpath.as_ptr(), libc::O_WRONLY | libc::O_CREAT, 0o644);
            if fd < 0 || libc::lockf(fd, libc::F_LOCK, 0) != 0 {
                libc::_exit(1);
            }
            libc::write(fds[1], b"L".as_ptr().cast(), 1);
            loop {
                libc::pause();
            }
        }
    }
    let mut byte = [0u8; 1];
    // SAFETY: reading one byte into a valid one-byte buffer.
    let n = unsafe { libc::read(fds[0], byte.as_mut_ptr().cast(), 1) };
    // SAFETY: closing the pipe ends this process owns.
    unsafe {
        libc::close(fds[0]);
        libc::close(fds[1]);
    }
    assert_eq!((n, byte[0]), (1, b'L'), "the child could not take the lock");
    pid
}

#[test]
fn a_supermin5_style_posix_lock_in_another_process_excludes_us_until_it_dies() {
    let d = tempfile::tempdir().unwrap();
    let lockfile = d.path().join("lock");
    let child = fork_posix_locker(&lockfile);
    assert!(try_lock(&lockfile).unwrap().is_none());
    // SAFETY: signalling and reaping our own child.
    unsafe {
        libc::kill(child, libc::SIGKILL);
        let mut status = 0;
        libc::waitpid(child, &mut status, 0);
    }
    // The kernel drops a dead process's locks: the lock is ours now.
    assert!(try_lock(&lockfile).unwrap().is_some());
    let held = lock(&lockfile).unwrap();
    assert_eq!(held.path(), lockfile);
}

#[test]
fn a_blocked_locker_proceeds_once_the_holder_releases() {
    let d = tempfile::tempdir().unwrap();
    let lockfile = Arc::new(d.path().join("lock"));
    let held = lock(&lockfile).unwrap();
    let released = Arc::new(AtomicUsize::new(0));
    let waiter = {
        let (lockfile, released) = (lockfile.clone(), released.clone());
        std::thread::spawn(move || {
            let _l = lock(&lockfile).unwrap();
            // The holder sets this before it releases: seeing 0 here would
            // mean we got the lock while it was still held.
            released.load(Ordering::SeqCst)
        })
    };
    std::thread::sleep(Duration::from_millis(50));
    released.store(1, Ordering::SeqCst);
    drop(held);
    assert_eq!(waiter.join().unwrap(), 1);
}
