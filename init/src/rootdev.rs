//! Finding the root block device named by `root=` without udev or blkid.
//!
//! Block devices appear in `/sys/class/block/<name>/dev` ("MAJ:MIN") once their driver
//! has probed them, which under TCG can take seconds after the module loaded. A
//! `root=/dev/NAME` waits for that entry; `root=UUID=`/`LABEL=` reads the ext2/3/4
//! superblock (1024 bytes in: magic 0xEF53 at +0x38, UUID at +0x68, label at +0x78) of
//! every device listed there. We poll with a growing back-off (1 ms doubling to 1 s), so a
//! fast boot pays microseconds and a slow one pays little CPU, bounded by `root_wait`.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Duration;

use crate::cmdline::RootSpec;

/// Where the superblock starts, and where its fields are within it.
const SUPERBLOCK_OFFSET: u64 = 1024;
const MAGIC_AT: usize = 0x38;
const UUID_AT: usize = 0x68;
const LABEL_AT: usize = 0x78;
const EXT2_MAGIC: u16 = 0xEF53;
/// Enough of the superblock to hold all three fields.
const SUPERBLOCK_PREFIX: usize = LABEL_AT + 16;

/// A found device: its kernel name and device number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub name: String,
    pub major: u32,
    pub minor: u32,
}

/// The sleeps between polls: 1 ms, 2 ms, 4 ms … capped at 16 ms each, ending once they add
/// up to `limit` (the last one shortened to fit). The cap is small because a disk behind an
/// asynchronous SCSI scan (libguestfs's virtio-scsi root) appears a few hundred ms after
/// its module loads: with a 1 s cap the poll after it could come up to 0.25 s late, on
/// every boot; a poll costs a directory listing, nothing next to that.
pub struct Backoff {
    next: Duration,
    remaining: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(1);
    const CAP: Duration = Duration::from_millis(16);

    pub fn new(limit: Duration) -> Backoff {
        Backoff {
            next: Self::FIRST,
            remaining: limit,
        }
    }
}

impl Iterator for Backoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        if self.remaining.is_zero() {
            return None;
        }
        let sleep = self.next.min(self.remaining);
        self.remaining -= sleep;
        self.next = (self.next * 2).min(Self::CAP);
        Some(sleep)
    }
}

/// Parses a sysfs `dev` file's "MAJ:MIN\n".
pub fn parse_dev(text: &str) -> Option<(u32, u32)> {
    let (major, minor) = text.trim().split_once(':')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

/// Whether the superblock prefix (starting at byte 1024 of the device) is an ext2/3/4
/// file system matching `want`.
pub fn superblock_matches(superblock: &[u8], want: &RootSpec) -> bool {
    if superblock.len() < SUPERBLOCK_PREFIX {
        return false;
    }
    let magic = u16::from_le_bytes([superblock[MAGIC_AT], superblock[MAGIC_AT + 1]]);
    if magic != EXT2_MAGIC {
        return false;
    }
    match want {
        RootSpec::Uuid(uuid) => &superblock[UUID_AT..UUID_AT + 16] == uuid,
        RootSpec::Label(label) => {
            let field = &superblock[LABEL_AT..LABEL_AT + 16];
            let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
            &field[..end] == label.as_bytes()
        }
        RootSpec::Device(_) => false,
    }
}

/// Opens a block device by number, for reading its superblock.
pub type Opener<'a> = &'a dyn Fn(&str, u32, u32) -> io::Result<File>;

/// One look at `sys_block` (normally `/sys/class/block`) for the device `want` names.
/// Device entries are visited in name order, so the first match is deterministic.
pub fn scan(sys_block: &Path, want: &RootSpec, open: Opener<'_>) -> Option<Found> {
    let dev_of = |name: &str| -> Option<Found> {
        let text = std::fs::read_to_string(sys_block.join(name).join("dev")).ok()?;
        let (major, minor) = parse_dev(&text)?;
        Some(Found {
            name: name.to_owned(),
            major,
            minor,
        })
    };
    if let RootSpec::Device(name) = want {
        return dev_of(name);
    }
    let mut names = list_devices(sys_block);
    names.sort();
    names
        .into_iter()
        .filter_map(|name| dev_of(&name))
        .find(|found| {
            let Ok(file) = open(&found.name, found.major, found.minor) else {
                return false;
            };
            let mut superblock = [0u8; SUPERBLOCK_PREFIX];
            // A short read means a device too small to hold ext2: not ours.
            file.read_exact_at(&mut superblock, SUPERBLOCK_OFFSET)
                .is_ok()
                && superblock_matches(&superblock, want)
        })
}

/// The names of the block devices the kernel knows now (for scanning, and for telling
/// the user what there is when the root never shows up).
pub fn list_devices(sys_block: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(sys_block) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|name| !name.starts_with('.'))
        .collect();
    names.sort();
    names
}

/// Polls [`scan`] with the [`Backoff`] until the device appears or `limit` has been slept.
/// `waiting` is called once, when the wait has gone on for a second, so the console says
/// what we are waiting for long before we give up.
pub fn wait_for(
    sys_block: &Path,
    want: &RootSpec,
    limit: Duration,
    open: Opener<'_>,
    sleep: &dyn Fn(Duration),
    waiting: &mut dyn FnMut(),
) -> Option<Found> {
    let mut slept = Duration::ZERO;
    let mut told = false;
    let mut backoff = Backoff::new(limit);
    loop {
        if let Some(found) = scan(sys_block, want, open) {
            return Some(found);
        }
        let pause = backoff.next()?;
        if !told && slept >= Duration::from_secs(1) {
            told = true;
            waiting();
        }
        sleep(pause);
        slept += pause;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::path::PathBuf;

    const UUID: [u8; 16] = *b"0123456789abcdef";

    fn superblock(magic: u16, uuid: [u8; 16], label: &[u8]) -> Vec<u8> {
        let mut sb = vec![0u8; SUPERBLOCK_PREFIX];
        sb[MAGIC_AT..MAGIC_AT + 2].copy_from_slice(&magic.to_le_bytes());
        sb[UUID_AT..UUID_AT + 16].copy_from_slice(&uuid);
        sb[LABEL_AT..LABEL_AT + label.len()].copy_from_slice(label);
        sb
    }

    #[test]
    fn backoff_grows_caps_and_stops_at_the_limit() {
        let sleeps: Vec<Duration> = Backoff::new(Duration::from_secs(5)).collect();
        assert_eq!(sleeps[0], Duration::from_millis(1));
        assert_eq!(sleeps[1], Duration::from_millis(2));
        // Each sleep doubles the last one up to the cap; only the final one is cut short.
        for i in 1..sleeps.len() - 1 {
            assert_eq!(sleeps[i], (sleeps[i - 1] * 2).min(Backoff::CAP));
        }
        assert!(sleeps.iter().all(|&s| s <= Backoff::CAP));
        assert_eq!(sleeps.iter().sum::<Duration>(), Duration::from_secs(5));
    }

    #[test]
    fn zero_limit_never_sleeps() {
        assert_eq!(Backoff::new(Duration::ZERO).count(), 0);
    }

    #[test]
    fn dev_file_is_major_colon_minor() {
        assert_eq!(parse_dev("8:0\n"), Some((8, 0)));
        assert_eq!(parse_dev("259:12"), Some((259, 12)));
        assert_eq!(parse_dev("8"), None);
        assert_eq!(parse_dev("a:b"), None);
    }

    #[test]
    fn superblock_needs_the_magic_and_the_same_uuid() {
        let want = RootSpec::Uuid(UUID);
        assert!(superblock_matches(&superblock(0xEF53, UUID, b""), &want));
        assert!(!superblock_matches(&superblock(0x1234, UUID, b""), &want));
        assert!(!superblock_matches(
            &superblock(0xEF53, *b"fedcba9876543210", b""),
            &want
        ));
        assert!(!superblock_matches(&[0u8; 10], &want));
    }

    #[test]
    fn label_matches_whole_label_only() {
        let sb = superblock(0xEF53, UUID, b"appliance");
        assert!(superblock_matches(
            &sb,
            &RootSpec::Label("appliance".into())
        ));
        assert!(!superblock_matches(&sb, &RootSpec::Label("app".into())));
        let full = superblock(0xEF53, UUID, b"sixteen-bytes-xx");
        assert!(superblock_matches(
            &full,
            &RootSpec::Label("sixteen-bytes-xx".into())
        ));
    }

    /// A fake `/sys/class/block` plus one image file per device standing in for the node.
    struct FakeSys {
        dir: PathBuf,
    }

    impl FakeSys {
        fn new(tag: &str) -> FakeSys {
            let dir = std::env::temp_dir().join(format!(
                "supermin-init-rootdev-{tag}-{}",
                std::process::id()
            ));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(dir.join("sys")).unwrap();
            std::fs::create_dir_all(dir.join("images")).unwrap();
            FakeSys { dir }
        }

        fn add(&self, name: &str, dev: &str, image: &[u8]) {
            let entry = self.dir.join("sys").join(name);
            std::fs::create_dir_all(&entry).unwrap();
            std::fs::write(entry.join("dev"), dev).unwrap();
            std::fs::write(self.dir.join("images").join(name), image).unwrap();
        }

        fn sys(&self) -> PathBuf {
            self.dir.join("sys")
        }

        fn opener(&self) -> impl Fn(&str, u32, u32) -> io::Result<File> + '_ {
            move |name, _, _| File::open(self.dir.join("images").join(name))
        }
    }

    impl Drop for FakeSys {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn image_with(sb: &[u8]) -> Vec<u8> {
        let mut image = vec![0u8; 1024];
        image.extend_from_slice(sb);
        image.resize(4096, 0);
        image
    }

    #[test]
    fn scan_finds_the_device_holding_the_uuid() {
        let fake = FakeSys::new("uuid");
        fake.add(
            "sda",
            "8:0\n",
            &image_with(&superblock(0xEF53, *b"other-uuid-00000", b"")),
        );
        fake.add("sdb", "8:16\n", &image_with(&superblock(0xEF53, UUID, b"")));
        fake.add("sr0", "11:0\n", b"tiny");
        let found = scan(&fake.sys(), &RootSpec::Uuid(UUID), &fake.opener());
        assert_eq!(
            found,
            Some(Found {
                name: "sdb".into(),
                major: 8,
                minor: 16
            })
        );
    }

    #[test]
    fn scan_by_name_reads_the_dev_file_without_opening() {
        let fake = FakeSys::new("name");
        fake.add("vda", "254:0\n", b"");
        let refuse = |_: &str, _: u32, _: u32| -> io::Result<File> { panic!("opened a device") };
        let found = scan(&fake.sys(), &RootSpec::Device("vda".into()), &refuse);
        assert_eq!(found.map(|f| (f.major, f.minor)), Some((254, 0)));
        assert_eq!(
            scan(&fake.sys(), &RootSpec::Device("vdb".into()), &refuse),
            None
        );
    }

    #[test]
    fn waiting_gives_up_after_the_limit_and_says_so_once() {
        let fake = FakeSys::new("giveup");
        fake.add(
            "sda",
            "8:0\n",
            &image_with(&superblock(0xEF53, *b"other-uuid-00000", b"")),
        );
        let slept = Cell::new(Duration::ZERO);
        let mut told = 0;
        let found = wait_for(
            &fake.sys(),
            &RootSpec::Uuid(UUID),
            Duration::from_secs(3),
            &fake.opener(),
            &|d| slept.set(slept.get() + d),
            &mut || told += 1,
        );
        assert_eq!(found, None);
        assert_eq!(slept.get(), Duration::from_secs(3));
        assert_eq!(told, 1);
    }

    #[test]
    fn waiting_returns_once_the_device_appears() {
        let fake = FakeSys::new("appear");
        let polls = Cell::new(0);
        let found = wait_for(
            &fake.sys(),
            &RootSpec::Device("vda".into()),
            Duration::from_secs(60),
            &fake.opener(),
            &|_| {
                polls.set(polls.get() + 1);
                if polls.get() == 3 {
                    fake.add("vda", "254:0\n", b"");
                }
            },
            &mut || {},
        );
        assert_eq!(found.map(|f| f.name), Some("vda".into()));
        assert_eq!(polls.get(), 3);
    }

    #[test]
    fn device_list_is_sorted_and_skips_hidden_entries() {
        let fake = FakeSys::new("list");
        fake.add("vdb", "254:16", b"");
        fake.add("vda", "254:0", b"");
        std::fs::create_dir_all(fake.sys().join(".hidden")).unwrap();
        assert_eq!(list_devices(&fake.sys()), ["vda", "vdb"]);
        assert!(list_devices(Path::new("/nonexistent")).is_empty());
    }
}
