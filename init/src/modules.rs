//! Loading the kernel modules listed in the initrd's `/modules`, in that order.
//!
//! The builder put them there decompressed and already sorted by dependency, so each is
//! one `finit_module(fd, "", 0)`; kernels without that syscall get `init_module` from a
//! buffer. A module that fails is reported and skipped, as supermin does: a driver for
//! hardware that is absent, or a CPU-specific crypto module under TCG, fails harmlessly,
//! and if something needed is missing, the root device never appears and that failure
//! says what to look at.
//!
//! Signatures: a distribution's modules carry an appended PKCS#7 signature, and a kernel
//! built with module signing hashes every module it is given and checks that signature,
//! even when it does not enforce signing. Under TCG that check is about a third of the
//! init's module time (0.15 s of a 2 s boot for ext4 and its dependencies). It protects
//! nothing here: these modules come from the initrd, which the kernel trusts as a whole
//! (this very program is PID 1). So when `/sys/module/module/parameters/sig_enforce` says
//! `N`, each module is handed over without its signature; the kernel then marks itself
//! tainted (`E`, an unsigned module), says so once at notice level, and loads it. A kernel
//! that refuses an unsigned module after all (lockdown) gets the signed one. The kernel
//! command line's `supermin.verify_modules` keeps the signatures.
//!
//! A module handed over without its signature is also changed in two ways that keep what
//! it does and save the kernel work that is slow under TCG: its static-call sites are
//! hidden (calls then go through their trampolines), and its ftrace call sites are made
//! the no-ops ftrace would make of them and hidden from ftrace (`ftrace.rs`; not when the
//! command line asks for function tracing or probing, or says `supermin.trace_modules`).
//!
//! Before its turn each module is judged by `need.rs`: one this boot can do without (a disk
//! driver whose device is absent, a generic crypto fallback) is skipped, and said so when
//! verbose.

use std::collections::HashSet;
use std::fs::File;
use std::io;
use std::path::Path;

use rustix::io::Errno;

use crate::{elf, ftrace, need, say, verbose};

/// One line of the module list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry<'a> {
    /// The module file.
    pub path: &'a str,
    /// `preload`: a module the root would load itself; left to the root when the kernel
    /// command line sets its parameters or blacklists it (its modprobe applies those).
    pub preload: bool,
    /// `when=scsi-device`: only when the VM has a SCSI device (a module the root's udev
    /// would load for one).
    pub scsi_device_only: bool,
}

/// The module list in load order: one `PATH [preload] [when=CONDITION]` per line, blank
/// lines and `#` comments ignored. An unknown word is ignored, and an unknown condition
/// loads the module.
pub fn parse_list(text: &str) -> Vec<Entry<'_>> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let path = words.next()?;
            let rest: Vec<&str> = words.collect();
            Some(Entry {
                path,
                preload: rest.contains(&"preload"),
                scsi_device_only: rest.contains(&"when=scsi-device"),
            })
        })
        .collect()
}

/// The module name of a listed path (`/lib/modules/dm_mod.ko` is `dm_mod`).
fn name_of(path: &str) -> String {
    let base = path.rsplit('/').next().unwrap_or(path);
    base.strip_suffix(".ko").unwrap_or(base).replace('-', "_")
}

/// Why the kernel command line leaves module `name` to the root's modprobe: it sets one
/// of its parameters (`NAME.PARAM=`), which only modprobe passes at load time, or
/// blacklists it (`modprobe.blacklist=`, `module_blacklist=`).
pub fn left_to_root_by(cmdline: &str, name: &str) -> Option<&'static str> {
    for param in cmdline.split_whitespace() {
        let param = param.replace('-', "_");
        if param
            .strip_prefix(name)
            .is_some_and(|rest| rest.starts_with('.'))
        {
            return Some("the kernel command line sets its parameters");
        }
        for key in ["modprobe.blacklist=", "module_blacklist="] {
            if let Some(list) = param.strip_prefix(key) {
                if list.split(',').any(|n| n == name) {
                    return Some("the kernel command line blacklists it");
                }
            }
        }
    }
    None
}

/// What became of one module.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Loaded,
    AlreadyLoaded,
    Failed(Errno),
    Missing(io::ErrorKind),
}

/// How each module is handed to the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Handover {
    pub signatures: Signatures,
    pub ftrace_sites: FtraceSites,
}

/// What becomes of an unsigned module's ftrace call sites.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FtraceSites {
    /// Left for ftrace to patch and record.
    Keep,
    /// Made no-ops and hidden from ftrace (`ftrace.rs`).
    Nop,
}

/// Call sites stay for ftrace when the command line asks for function tracing or probing.
pub fn ftrace_policy(function_tracing: bool) -> FtraceSites {
    if function_tracing {
        FtraceSites::Keep
    } else {
        FtraceSites::Nop
    }
}

/// Whether modules are handed to the kernel with their appended signatures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signatures {
    Keep,
    Strip,
}

/// The kernel's switch for enforced module signing (present when it was built with
/// module signing).
const SIG_ENFORCE: &str = "/sys/module/module/parameters/sig_enforce";

/// Strip signatures only when asked not to verify and the kernel says it does not enforce
/// them; a kernel without module signing has nothing to skip.
pub fn signature_policy(verify_requested: bool) -> Signatures {
    policy_from(
        verify_requested,
        std::fs::read_to_string(SIG_ENFORCE).ok().as_deref(),
    )
}

fn policy_from(verify_requested: bool, sig_enforce: Option<&str>) -> Signatures {
    match sig_enforce.map(str::trim) {
        Some("N") if !verify_requested => Signatures::Strip,
        _ => Signatures::Keep,
    }
}

/// The magic string `scripts/sign-file` appends after the signature.
const SIG_MAGIC: &[u8] = b"~Module signature appended~\n";
/// `struct module_signature`, between the signature and the magic: its last four bytes are
/// the signature's length, big-endian.
const SIG_INFO_LEN: usize = 12;

/// The module without its appended signature, or `None` when it carries none or the
/// trailer does not add up (then the module is loaded as it is).
pub fn strip_signature(image: &[u8]) -> Option<&[u8]> {
    let rest = image.strip_suffix(SIG_MAGIC)?;
    let info_start = rest.len().checked_sub(SIG_INFO_LEN)?;
    let info = rest.get(info_start..)?;
    let len_bytes: [u8; 4] = info.get(8..12)?.try_into().ok()?;
    let sig_len = usize::try_from(u32::from_be_bytes(len_bytes)).ok()?;
    let end = info_start.checked_sub(sig_len)?;
    image.get(..end)
}

/// Loads every module in `list_path` that this boot needs (all of them with
/// `all_modules`); returns how many loaded. A missing list means no modules (a kernel with
/// every driver built in needs none).
pub fn load_all(
    list_path: &Path,
    verbose: bool,
    handover: Handover,
    all_modules: bool,
    cmdline: &str,
) -> usize {
    let text = match std::fs::read_to_string(list_path) {
        Ok(text) => text,
        Err(err) => {
            say!(
                "warning: cannot read the module list {}: {err}; loading no modules",
                list_path.display()
            );
            return 0;
        }
    };
    if handover.signatures == Signatures::Strip {
        verbose!(
            verbose,
            "loading modules without their signatures (the kernel does not enforce signing; supermin.verify_modules keeps them)"
        );
        if handover.ftrace_sites == FtraceSites::Nop {
            verbose!(
                verbose,
                "and without their ftrace call sites (no-ops: these modules cannot be traced or kprobed; supermin.trace_modules keeps them)"
            );
        }
    }
    let entries = parse_list(&text);
    // Every module's .modinfo first: a module another one depends on is never skipped, and
    // if any module's facts cannot be read (so neither can its dependencies), none is.
    let infos: Vec<Option<need::ModInfo>> = if all_modules {
        vec![None; entries.len()]
    } else {
        entries
            .iter()
            .map(|entry| need::read_modinfo(Path::new(entry.path)))
            .collect()
    };
    let judge = !all_modules && infos.iter().all(Option::is_some);
    if !all_modules && !judge {
        verbose!(
            verbose,
            "a module's .modinfo is unreadable: loading every listed module"
        );
    }
    let depended: HashSet<String> = infos
        .iter()
        .flatten()
        .flat_map(|info| info.depends.iter().cloned())
        .collect();
    let mut loaded = 0;
    for (i, (entry, info)) in entries.iter().zip(&infos).enumerate() {
        let path = entry.path;
        // Nothing another listed module needs is left out, and nothing when any module's
        // facts are unreadable (`judge`).
        let depended_on = info
            .as_ref()
            .is_some_and(|info| depended.contains(&info.name));
        if entry.preload && !depended_on {
            if let Some(why) = left_to_root_by(cmdline, &name_of(path)) {
                verbose!(
                    verbose,
                    "module {path} left to the root's modprobe: {why}; skipped"
                );
                continue;
            }
        }
        if entry.scsi_device_only
            && judge
            && !depended_on
            && !need::scsi_device_present(Path::new(need::SCSI_DEVICES))
        {
            verbose!(
                verbose,
                "module {path} not needed: no SCSI device is present (the root loads it for SCSI devices); skipped (supermin.all_modules loads it)"
            );
            continue;
        }
        // A virtio transport still to come means the virtio bus may not show its devices yet.
        let transport_pending = infos[i + 1..]
            .iter()
            .flatten()
            .any(|later| need::is_virtio_transport(&later.name));
        if let Some(why) = info
            .as_ref()
            .filter(|_| judge)
            .and_then(|info| need::skip_reason(info, &depended, transport_pending, &need::Live))
        {
            verbose!(
                verbose,
                "module {path} not needed: {why}; skipped (supermin.all_modules loads it)"
            );
            continue;
        }
        verbose!(verbose, "loading module {path}");
        match load_one(Path::new(path), handover) {
            Outcome::Loaded => loaded += 1,
            Outcome::AlreadyLoaded => verbose!(verbose, "module {path} is already loaded"),
            Outcome::Missing(kind) => say!(
                "warning: module {path} is listed in /modules but cannot be opened ({kind}); skipped"
            ),
            // No such device: a driver for hardware this VM does not have (e.g. a CPU
            // crypto accelerator under TCG). Expected; only worth a word when verbose.
            Outcome::Failed(Errno::NODEV) => {
                verbose!(verbose, "module {path}: {}; skipped", explain(Errno::NODEV))
            }
            Outcome::Failed(errno) => {
                say!("warning: module {path} failed to load: {}; skipped", explain(errno))
            }
        }
    }
    loaded
}

fn load_one(path: &Path, handover: Handover) -> Outcome {
    if handover.signatures == Signatures::Strip {
        if let Some(outcome) = load_unsigned(path, handover.ftrace_sites) {
            return outcome;
        }
    }
    let file = match File::open(path) {
        Ok(file) => file,
        Err(err) => return Outcome::Missing(err.kind()),
    };
    match rustix::system::finit_module(&file, c"", 0) {
        Ok(()) => Outcome::Loaded,
        Err(Errno::EXIST) => Outcome::AlreadyLoaded,
        Err(Errno::NOSYS) => load_from_buffer(path),
        Err(errno) => Outcome::Failed(errno),
    }
}

/// Loads the module without its signature; `None` when it has none, or the kernel wants
/// it signed after all, so that the caller loads the file as it is.
fn load_unsigned(path: &Path, ftrace_sites: FtraceSites) -> Option<Outcome> {
    let mut mapped = match Mapped::open(path) {
        Ok(mapped) => mapped,
        Err(err) => return Some(Outcome::Missing(err.kind())),
    };
    let image = mapped.bytes_mut();
    let body_len = strip_signature(image)?.len();
    let body = &mut image[..body_len];
    hide_static_call_sites(body);
    if ftrace_sites == FtraceSites::Nop {
        ftrace::nop_call_sites(body);
    }
    match rustix::system::init_module(body, c"") {
        Ok(()) => Some(Outcome::Loaded),
        Err(Errno::EXIST) => Some(Outcome::AlreadyLoaded),
        Err(Errno::KEYREJECTED | Errno::NOKEY | Errno::KEYEXPIRED | Errno::PERM) => None,
        Err(errno) => Some(Outcome::Failed(errno)),
    }
}

/// A module file mapped copy-on-write. The kernel copies the module from our memory
/// either way; mapping the initramfs file instead of reading it saves one copy of every
/// module (4.4 MB for libguestfs's initrd), which is not free under TCG, where a CPU with
/// the "fast string" flags (libguestfs asks for `-cpu max`) copies one byte per emulated
/// `rep movsb` iteration. Our writes copy only the pages they touch: the static-call
/// rename one, the ftrace call sites and their relocations about a third of ext4's.
struct Mapped {
    ptr: *mut std::ffi::c_void,
    len: usize,
}

impl Mapped {
    fn open(path: &Path) -> io::Result<Mapped> {
        let file = File::open(path)?;
        let len = usize::try_from(file.metadata()?.len()).map_err(io::Error::other)?;
        if len == 0 {
            return Err(io::Error::from(io::ErrorKind::InvalidData));
        }
        use rustix::mm::{MapFlags, ProtFlags};
        // SAFETY: a new private mapping chosen by the kernel (no address given), of a file
        // in the initramfs that nothing else writes while PID 1 runs, `len` bytes long
        // (its whole size); it is only reached through `bytes_mut` and unmapped in `drop`.
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::PRIVATE,
                &file,
                0,
            )
        }?;
        Ok(Mapped { ptr, len })
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: `ptr` is a live, readable and writable mapping of `len` bytes owned by
        // `self`, and the borrow of `self` keeps it alive and unaliased.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.cast::<u8>(), self.len) }
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping `open` made; no borrow of it outlives `self`.
        let _ = unsafe { rustix::mm::munmap(self.ptr, self.len) };
    }
}

/// The section the kernel reads a module's inline static-call sites from.
const STATIC_CALL_SITES: &[u8] = b".static_call_sites";

/// Hides the module's `.static_call_sites` from the kernel, so that its static calls stay
/// calls through their trampolines instead of being rewritten into direct calls one by one
/// at load time; returns whether there was such a section.
///
/// Why: the kernel patches each site with `text_poke_bp` (three live code writes, each
/// switching page tables and flushing the TLB), cheap on hardware and costly under TCG,
/// where every flush empties the emulated TLB and every write invalidates translated code:
/// ext4's 381 sites are about a third of its load time (30 ms of the initrd's module time
/// in wall time, measured side by side). A call through the trampoline is the kernel's own
/// out-of-line static-call mode: the trampoline always jumps to the current target (every
/// `static_call_update` rewrites it), so behaviour is the same, one jump longer. Only the
/// section's name changes: its header's name offset moves one byte on, from
/// `.static_call_sites` to `static_call_sites` (the same string without its dot, a name the
/// kernel never looks for); its bytes and relocations stay. Done only to a module already
/// being handed over without its signature, never with `supermin.verify_modules`.
fn hide_static_call_sites(image: &mut [u8]) -> bool {
    let Some(section) =
        elf::sections_of(image).and_then(|s| s.into_iter().find(|s| s.name == STATIC_CALL_SITES))
    else {
        return false;
    };
    let Some(name_offset) = section.name_offset.checked_add(1) else {
        return false;
    };
    match image.get_mut(section.header_at..section.header_at + 4) {
        Some(field) => {
            field.copy_from_slice(&name_offset.to_le_bytes());
            true
        }
        None => false,
    }
}

fn load_from_buffer(path: &Path) -> Outcome {
    let image = match std::fs::read(path) {
        Ok(image) => image,
        Err(err) => return Outcome::Missing(err.kind()),
    };
    match rustix::system::init_module(&image, c"") {
        Ok(()) => Outcome::Loaded,
        Err(Errno::EXIST) => Outcome::AlreadyLoaded,
        Err(errno) => Outcome::Failed(errno),
    }
}

/// What a module loading errno means here (after module-init-tools' `moderror()`).
pub fn explain(errno: Errno) -> String {
    let meaning = match errno {
        Errno::NOEXEC => "invalid module format (built for another kernel, or still compressed)",
        Errno::NOENT => "unknown symbol in module (a dependency is missing or listed after it)",
        Errno::SRCH => "module has wrong symbol version",
        Errno::INVAL => "invalid parameters or module format",
        Errno::NODEV => "no such device (the hardware it drives is absent)",
        Errno::KEYREJECTED | Errno::KEYEXPIRED | Errno::NOKEY => {
            "signature rejected (the kernel enforces module signing)"
        }
        Errno::PERM => "operation not permitted (module loading is disabled or locked down)",
        _ => "",
    };
    if meaning.is_empty() {
        io::Error::from(errno).to_string()
    } else {
        format!("{meaning} [{}]", io::Error::from(errno))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_keeps_order_and_skips_blanks_and_comments() {
        let text = "/lib/modules/a.ko\n\n# comment\n  /lib/modules/b.ko  \n/lib/modules/c.ko";
        let paths: Vec<&str> = parse_list(text).iter().map(|e| e.path).collect();
        assert_eq!(
            paths,
            [
                "/lib/modules/a.ko",
                "/lib/modules/b.ko",
                "/lib/modules/c.ko"
            ]
        );
        assert!(parse_list(text).iter().all(|e| !e.scsi_device_only));
    }

    #[test]
    fn preload_and_scsi_device_marks_are_read_and_unknown_words_load_the_module() {
        let text = "/lib/modules/sg.ko preload when=scsi-device\n/lib/modules/dm_mod.ko preload\n/lib/modules/x.ko when=tuesday\n";
        assert_eq!(
            parse_list(text),
            [
                Entry {
                    path: "/lib/modules/sg.ko",
                    preload: true,
                    scsi_device_only: true
                },
                Entry {
                    path: "/lib/modules/dm_mod.ko",
                    preload: true,
                    scsi_device_only: false
                },
                Entry {
                    path: "/lib/modules/x.ko",
                    preload: false,
                    scsi_device_only: false
                }
            ]
        );
    }

    #[test]
    fn parameters_or_a_blacklist_on_the_command_line_leave_a_preload_to_the_root() {
        let cmdline =
            "console=ttyS0 dm-mod.use_blk_mq=1 modprobe.blacklist=floppy,sg root=/dev/sdb";
        assert!(left_to_root_by(cmdline, "dm_mod").is_some());
        assert!(left_to_root_by(cmdline, "sg").is_some());
        assert!(left_to_root_by("module_blacklist=sg", "sg").is_some());
        // Another module's parameters, or a name that only starts the same, do not count.
        assert_eq!(left_to_root_by("dm_mod_x.y=1 sgx.a=1 sg=1", "sg"), None);
        assert_eq!(left_to_root_by("console=ttyS0 quiet", "dm_mod"), None);
        assert_eq!(name_of("/lib/modules/dm-mod.ko"), "dm_mod");
    }

    #[test]
    fn empty_list_means_no_modules() {
        assert!(parse_list("").is_empty());
        assert!(parse_list("\n\n").is_empty());
    }

    #[test]
    fn a_missing_module_file_is_reported_not_loaded() {
        assert_eq!(
            load_one(
                Path::new("/nonexistent/supermin-test.ko"),
                Handover {
                    signatures: Signatures::Keep,
                    ftrace_sites: FtraceSites::Keep
                }
            ),
            Outcome::Missing(io::ErrorKind::NotFound)
        );
    }

    #[test]
    fn a_missing_list_loads_nothing() {
        assert_eq!(
            load_all(
                Path::new("/nonexistent/modules"),
                false,
                Handover {
                    signatures: Signatures::Strip,
                    ftrace_sites: FtraceSites::Nop
                },
                false,
                ""
            ),
            0
        );
    }

    #[test]
    fn errno_explanations_name_the_likely_cause() {
        assert!(explain(Errno::NOEXEC).contains("compressed"));
        assert!(explain(Errno::NOENT).contains("dependency"));
        // Unknown errnos fall back to the system's text.
        assert_eq!(
            explain(Errno::NOSPC),
            io::Error::from(Errno::NOSPC).to_string()
        );
    }

    fn signed(body: &[u8], sig: &[u8]) -> Vec<u8> {
        let mut out = body.to_vec();
        out.extend_from_slice(sig);
        // algo, hash, id_type (2 = PKCS#7), signer_len, key_id_len, 3 pad bytes, sig_len.
        out.extend_from_slice(&[0, 0, 2, 0, 0, 0, 0, 0]);
        out.extend_from_slice(&u32::try_from(sig.len()).unwrap().to_be_bytes());
        out.extend_from_slice(SIG_MAGIC);
        out
    }

    #[test]
    fn a_signed_module_loses_exactly_its_signature() {
        let body = b"\x7fELF module body";
        let image = signed(body, &[0x30; 677]);
        assert_eq!(strip_signature(&image), Some(&body[..]));
        // An empty signature still leaves the body.
        assert_eq!(strip_signature(&signed(body, &[])), Some(&body[..]));
    }

    #[test]
    fn an_unsigned_or_malformed_trailer_is_left_alone() {
        assert_eq!(strip_signature(b"\x7fELF no signature"), None);
        // Only the magic, no room for the info block.
        assert_eq!(strip_signature(SIG_MAGIC), None);
        // A signature length larger than the file.
        let mut image = signed(b"body", b"sig");
        let len_at = image.len() - SIG_MAGIC.len() - 4;
        image[len_at..len_at + 4].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(strip_signature(&image), None);
    }

    #[test]
    fn static_call_sites_are_renamed_to_the_same_name_without_its_dot_and_nothing_else_changes() {
        let image = elf::build(&[
            (".text", b"\xe8\0\0\0\0"),
            (".static_call_sites", b"\x01\0\0\0\x02\0\0\0"),
            (".modinfo", b"name=x\0"),
        ]);
        let mut hidden = image.clone();
        assert!(hide_static_call_sites(&mut hidden));
        let names = |img: &[u8]| -> Vec<Vec<u8>> {
            elf::sections_of(img)
                .unwrap()
                .into_iter()
                .map(|s| s.name)
                .collect()
        };
        assert_eq!(
            names(&hidden),
            [
                &b""[..],
                b".text",
                b"static_call_sites",
                b".modinfo",
                b".shstrtab"
            ]
        );
        // Only the four bytes of that one sh_name differ.
        let differing = image.iter().zip(&hidden).filter(|(a, b)| a != b).count();
        assert_eq!(differing, 1);
        // Done once: the renamed section is not found again.
        let mut again = hidden.clone();
        assert!(!hide_static_call_sites(&mut again));
        assert_eq!(again, hidden);
        // An image without the section, or not ELF at all, is left alone.
        let mut plain = elf::build(&[(".text", b"x")]);
        let copy = plain.clone();
        assert!(!hide_static_call_sites(&mut plain));
        assert_eq!(plain, copy);
        let mut junk = b"not an ELF".to_vec();
        assert!(!hide_static_call_sites(&mut junk));
    }

    #[test]
    fn a_mapped_module_is_a_private_copy_of_the_file() {
        let dir = std::env::temp_dir().join(format!("supermin-init-map-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("m.ko");
        std::fs::write(&path, b"\x7fELF module bytes").unwrap();
        let mut mapped = Mapped::open(&path).unwrap();
        assert_eq!(mapped.bytes_mut(), b"\x7fELF module bytes");
        mapped.bytes_mut()[0] = b'X';
        assert_eq!(mapped.bytes_mut()[0], b'X');
        drop(mapped);
        // The file itself is untouched.
        assert_eq!(std::fs::read(&path).unwrap(), b"\x7fELF module bytes");
        std::fs::write(&path, b"").unwrap();
        assert!(Mapped::open(&path).is_err());
        assert_eq!(
            Mapped::open(&dir.join("missing")).err().map(|e| e.kind()),
            Some(io::ErrorKind::NotFound)
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn ftrace_sites_stay_only_when_function_tracing_is_asked_for() {
        assert_eq!(ftrace_policy(false), FtraceSites::Nop);
        assert_eq!(ftrace_policy(true), FtraceSites::Keep);
    }

    #[test]
    fn signatures_are_stripped_only_when_the_kernel_does_not_enforce_them() {
        assert_eq!(policy_from(false, Some("N\n")), Signatures::Strip);
        assert_eq!(policy_from(false, Some("Y\n")), Signatures::Keep);
        assert_eq!(policy_from(false, None), Signatures::Keep);
        assert_eq!(policy_from(true, Some("N\n")), Signatures::Keep);
    }
}
