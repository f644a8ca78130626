//! Man pages: `supermin(1)` and one page per subcommand, `supermin-SUB(1)`.
//!
//! clap_mangen renders what the CLI definition knows (name, synopsis, options, the list of
//! subcommands), so those parts cannot drift from the parser. What a reader also needs and
//! clap does not hold (a longer description, the environment, exit statuses, the
//! differences from supermin 5, files, examples) is the text below, one [`Page`] per man
//! page, rendered with roff.

use clap_mangen::Man;
use roff::{bold, roman, Roff};

/// A piece of running text.
enum Block {
    /// A paragraph.
    Para(&'static str),
    /// Tagged paragraphs: a term in bold, then what it means.
    Terms(&'static [(&'static str, &'static str)]),
    /// A bulleted list.
    Bullets(&'static [&'static str]),
    /// Literal lines (commands), indented, not filled.
    Code(&'static str),
}

use Block::{Bullets, Code, Para, Terms};

/// The hand-written parts of one page.
struct Page {
    /// `None` for `supermin(1)`, else the subcommand's name.
    subcommand: Option<&'static str>,
    /// The synopsis, when [`synopsis`] cannot say it (supermin 5's grammar is modes).
    synopsis: Option<&'static str>,
    description: &'static [Block],
    environment: &'static [(&'static str, &'static str)],
    exit_status: &'static [(&'static str, &'static str)],
    /// Further sections, after EXIT STATUS: (heading, text).
    extra: &'static [(&'static str, &'static [Block])],
    see_also: &'static str,
}

const KERNEL_ENV: [(&str, &str); 3] = [
    (
        "SUPERMIN_KERNEL",
        "The kernel to use instead of the one found on the host (the newest of \
         /lib/modules/*/vmlinuz, then of /boot/vmlinuz-*). It is an error if it names \
         nothing or cannot be read; supermin 5 would fall back silently.",
    ),
    (
        "SUPERMIN_KERNEL_VERSION",
        "With SUPERMIN_KERNEL only (alone it is an error): that kernel's version, \
         instead of the one read from its header; it selects /lib/modules/VERSION unless \
         SUPERMIN_MODULES is set.",
    ),
    (
        "SUPERMIN_MODULES",
        "The modules directory to use, whichever kernel is chosen.",
    ),
];

const EPOCH_ENV: (&str, &str) = (
    "SOURCE_DATE_EPOCH",
    "Seconds since 1970: reproducible output. Every time in the image is clamped to it \
     (later modification times become it; access and change times become the \
     modification time), the filesystem UUID is derived from the content, and the \
     initrd's times are the epoch. The same inputs then give the same bytes.",
);

const CACHE_ENV: [(&str, &str); 2] = [
    (
        "LIBGUESTFS_CACHEDIR",
        "Where supermin run caches its default appliance: \
         $LIBGUESTFS_CACHEDIR/.guestfs-UID/supermin-rs-default.d. The directory and its \
         .guestfs-UID subdirectory must belong to the user and not be writable by others.",
    ),
    (
        "TMPDIR",
        "Used instead of LIBGUESTFS_CACHEDIR when that is unset; /var/tmp when both are \
         unset. supermin run also puts qemu's scratch files (the root's throwaway overlay) \
         there.",
    ),
];

const GENERIC_EXIT: [(&str, &str); 2] = [
    (
        "0",
        "Success (also for --help, and for --if-newer when the output was up to date).",
    ),
    (
        "1",
        "An error, usage errors included (supermin 5 exits 1 for those too). One line on \
         standard error says what failed and why (\"supermin: error: ...\"), sometimes \
         followed by one that says what to do (\"supermin: hint: ...\"); -v says more.",
    ),
];

const SEE_ALSO_ALL: &str = "supermin(1), supermin-run(1), supermin-mkfs(1), supermin-kernel(1), \
     supermin-update-appliance(1), supermin-doctor(1), supermin-cache(1), guestfs(3), libguestfs-test-tool(1), \
     libguestfs-make-fixed-appliance(1), qemu(1), /usr/share/doc/supermin-rs/README.md.gz";

const SUPERMIN: Page = Page {
    subcommand: None,
    synopsis: Some(
        "supermin --prepare [-v] [--use-installed] [--packager-config CONFIGFILE] -o OUTPUTDIR PACKAGE...
supermin --build -f ext2|chroot [--if-newer] [--lock LOCKFILE] [--copy-kernel] [--fixed] [--size SIZE] [--host-cpu ARCH] [--include-packagelist] [-v] -o OUTPUTDIR [INPUT...]
supermin --list-drivers | --version | --help
supermin run [OPTIONS] -- CMD [ARG...]
supermin mkfs -o IMAGE [OPTIONS] SOURCE
supermin kernel [--json] [--host-cpu ARCH]
supermin update-appliance [--supermin-d DIR] [-v] [DIR]",
    ),
    description: &[
        Para(
            "supermin builds supermin appliances: a kernel, a small initrd and a root \
             filesystem (an ext2 image, or a directory tree) made from the host's own \
             installed files. libguestfs boots such an appliance to work on disk images. \
             This is supermin-rs, a reimplementation in Rust that accepts supermin 5's \
             command line (the same modes, options, inputs and outputs) and adds the \
             subcommands below.",
        ),
        Para(
            "--prepare writes OUTPUTDIR, a supermin.d: the list of packages (PACKAGE... and \
             everything they depend on) and base.tar.gz with their configuration files, \
             taken from the packages (downloaded with apt-get download on Debian), or from \
             the host's installed files with --use-installed.",
        ),
        Para(
            "--build reads the INPUTs (files, or directories read in name order, such as a \
             supermin.d) and writes the appliance into OUTPUTDIR. Inputs are recognised by \
             their content, as supermin 5 does: gzip- or xz-compressed files are \
             decompressed; a tar archive is a base image unpacked into the root; a file \
             whose first byte is / lists host files (one glob a line); - lists files to \
             exclude (fnmatch patterns, where * also matches /); otherwise it lists \
             packages, which are resolved through the host's package database (dpkg, rpm \
             or pacman) with all their dependencies. Every ELF file brings its interpreter \
             and libraries. With no INPUT, the embedded default appliance (the one \
             supermin run boots) is built.",
        ),
        Para(
            "OUTPUTDIR is replaced atomically: a reader sees the old appliance or the new \
             one, never a half-written one, even when the build is killed.",
        ),
        Para(
            "libguestfs runs /usr/bin/supermin (the path is compiled into it) on every \
             launch, as:",
        ),
        Code(
            "supermin --build --if-newer --lock CACHE/lock --copy-kernel -f ext2 \\
    --host-cpu x86_64 /usr/lib/x86_64-linux-gnu/guestfs/supermin.d -o CACHE/appliance.d",
        ),
        Para(
            "When nothing changed this returns in milliseconds; an edit inside supermin.d, \
             a new kernel or a package upgrade rebuilds the appliance.",
        ),
    ],
    environment: &[
        KERNEL_ENV[0],
        KERNEL_ENV[1],
        KERNEL_ENV[2],
        EPOCH_ENV,
        CACHE_ENV[0],
        CACHE_ENV[1],
        (
            "SUPERMIN_ACCEL, SUPERMIN_QEMU_USER",
            "Read by supermin run only: see supermin-run(1).",
        ),
    ],
    exit_status: &GENERIC_EXIT,
    extra: &[
        (
            "FILES",
            &[Terms(&[
                (
                    "OUTPUTDIR/kernel",
                    "A symbolic link to the host's kernel, or a copy with --copy-kernel or \
                     --fixed.",
                ),
                (
                    "OUTPUTDIR/initrd",
                    "A newc cpio archive holding supermin's static init and the kernel \
                     modules needed to find and mount the root, decompressed.",
                ),
                (
                    "OUTPUTDIR/root",
                    "The root filesystem: a sparse ext2 image, 4 GiB unless --size says \
                     otherwise. Its /init is the appliance's (libguestfs supplies its own).",
                ),
                (
                    "OUTPUTDIR/README.fixed",
                    "With --fixed: says how to use the directory as LIBGUESTFS_PATH.",
                ),
                (
                    "OUTPUTDIR/.supermin-stamp",
                    "The fingerprint of everything the output was built from, compared by \
                     --if-newer.",
                ),
            ])],
        ),
        (
            "DIFFERENCES FROM SUPERMIN 5",
            &[
                Para("On purpose:"),
                Bullets(&[
                    "Dependencies are resolved completely: :any-qualified dependencies, \
                     virtual packages (to an installed provider) and every installed \
                     alternative. libguestfs's appliance on Debian 12 therefore also holds \
                     perl.",
                    "Every ELF file in the appliance brings its interpreter and libraries \
                     (found by ld.so's rules, without ldd), so a supermin.d of host files \
                     alone works.",
                    "--if-newer compares a fingerprint of what determines the output (the \
                     inputs' contents, the package database, the kernel and modules, the \
                     SUPERMIN_* variables, the options and this program's sources) instead \
                     of modification times: it rebuilds after an edit inside supermin.d and \
                     never trusts a half-written output.",
                    "A SUPERMIN_* variable that names nothing, an unreadable kernel or \
                     modules directory, an -o that is an existing file or lies inside an \
                     input, a truncated base image: each is an error, where supermin 5 falls \
                     back silently or fails later.",
                    "The initrd holds supermin-rs's static init and only the modules boot \
                     needs, decompressed; the root holds the kernel's whole modules tree, as \
                     with supermin 5.",
                    "The ext2 image is written by supermin itself (no mke2fs or libext2fs): \
                     sparse, reproducible with SOURCE_DATE_EPOCH, with hard links and times \
                     after 2038 kept.",
                    "-f chroot makes absolute symbolic links relative, so the tree is usable \
                     where it lies.",
                    "-v may be repeated (-vv lists the packages). --list-drivers lists dpkg, \
                     rpm and pacman (one rpm handler serves every rpm distribution).",
                    "--fixed and the subcommands run, mkfs, kernel and update-appliance are \
                     new. --dtb (removed in supermin 5.1.18) and supermin 4's --names are \
                     refused with a message saying so.",
                ]),
            ],
        ),
        (
            "EXAMPLES",
            &[
                Para("Build the appliance libguestfs uses, as a fixed appliance:"),
                Code(
                    "supermin --build -f ext2 --fixed /usr/lib/x86_64-linux-gnu/guestfs/supermin.d -o /tmp/appliance
LIBGUESTFS_PATH=/tmp/appliance libguestfs-test-tool",
                ),
                Para("Prepare a supermin.d for a distribution package, then build from it:"),
                Code(
                    "supermin --prepare bash coreutils -o supermin.d
supermin --build -f ext2 supermin.d -o appliance",
                ),
            ],
        ),
    ],
    see_also: SEE_ALSO_ALL,
};

const RUN: Page = Page {
    subcommand: Some("run"),
    synopsis: None,
    description: &[
        Para(
            "supermin run boots an appliance under qemu and runs CMD in it through \
             supermin's daemon, the appliance's /init. Standard input, output and error \
             are passed through; the exit status is CMD's.",
        ),
        Para(
            "Without --appliance it boots the embedded default appliance: a shell, \
             coreutils, util-linux, e2fsprogs and kmod from the host (with their \
             libraries), the kernel's modules, and the daemon. It is built on first use \
             into the cache directory (see ENVIRONMENT) and reused while nothing it \
             depends on changes. --appliance DIR boots one built with supermin --build -f \
             ext2 -o DIR and no INPUT; libguestfs's appliance has its own /init and is not \
             booted this way.",
        ),
        Para(
            "The root is attached with a throwaway overlay: what CMD writes there is \
             discarded. --add attaches disk images, as raw images (their format is never \
             probed), as /dev/vdb, /dev/vdc and so on. The guest is treated as hostile: \
             what it sends is bounded, and every wait honours --timeout and signals.",
        ),
        Para(
            "qemu-system-x86_64 is looked up in PATH (on Debian, the qemu-system-x86 \
             package). --accel auto, the default, tries KVM and falls back to TCG on any \
             failure before the appliance answers, saying so once and remembering the \
             verdict until the host reboots or qemu changes. When supermin runs as root, \
             qemu runs as nobody once it has opened its files.",
        ),
        Para(
            "The first run of an appliance boots it (2-3 s under TCG) and saves the booted \
             machine in the runtime cache (supermin-rs-saved, private to the user); later \
             runs restore it instead, in a fraction of a second, with the host's clock and \
             fresh entropy, --add disks hot-plugged and --share directories mounted \
             afterwards. --cold boots without restoring. A saved machine that does not \
             restore means a cold boot and a new one.",
        ),
        Para(
            "--add disks are raw unless :format=qcow2 is named: the format is never guessed \
             from the content, which a guest can write. --share mounts host directories, \
             read-only unless :rw, over virtiofs when a usable virtiofsd is installed \
             (much faster on many small files; it runs as the user qemu runs as) and over \
             qemu's 9p otherwise (--share-transport auto|9p|virtiofs chooses; -v says \
             which and why); --cwd-share shares the current directory and \
             runs the command there (a cargo test runner). -i gives an interactive shell on \
             a terminal in the appliance; ~. after a newline ends it. --copy-in and \
             --copy-out copy trees before and after the command.",
        ),
    ],
    environment: &[
        (
            "SUPERMIN_ACCEL",
            "The accelerator when --accel is not given: auto, kvm or tcg.",
        ),
        (
            "SUPERMIN_QEMU_USER",
            "When supermin runs as root, the user qemu switches to when --qemu-user is not \
             given (default nobody; root keeps root).",
        ),
        CACHE_ENV[0],
        CACHE_ENV[1],
        (
            "XDG_RUNTIME_DIR",
            "Where the verdict on KVM is kept (else in TMPDIR or /var/tmp).",
        ),
        (
            "SUPERMIN_VIRTIOFSD",
            "The virtiofsd serving --share directories over virtiofs, instead of looking in \
             /usr/libexec, /usr/lib/qemu, /usr/local/libexec, PATH and ~/.cargo/bin.",
        ),
        (
            "PATH",
            "Where qemu-system-x86_64 (and virtiofsd) is looked up.",
        ),
        KERNEL_ENV[0],
        KERNEL_ENV[1],
        KERNEL_ENV[2],
        EPOCH_ENV,
    ],
    exit_status: &[
        ("N", "CMD exited with status N."),
        (
            "128+N",
            "CMD was killed by signal N, or supermin itself was interrupted by signal N.",
        ),
        ("124", "--timeout expired; the appliance was killed."),
        (
            "127",
            "CMD could not be started in the appliance (not found, say).",
        ),
        (
            "1",
            "supermin failed before CMD could run (no qemu, no kernel, the appliance \
             did not boot): one line on standard error says what and what to do.",
        ),
    ],
    extra: &[(
        "EXAMPLES",
        &[Code(
            "supermin run -- uname -a
supermin run -- sh -c 'lsblk; dmesg | tail'
supermin run --add disk.img:ro -- lsblk
supermin run --accel tcg --timeout 60 -- true",
        )],
    )],
    see_also: SEE_ALSO_ALL,
};

const MKFS: Page = Page {
    subcommand: Some("mkfs"),
    synopsis: None,
    description: &[
        Para(
            "supermin mkfs writes an ext2 filesystem image holding the tree under SOURCE, \
             without root privileges, loop devices or mke2fs (compare mke2fs -d and \
             virt-make-fs). Contents, modes, owners, times, symbolic links, hard links and \
             device nodes are kept. The image is sparse and passes e2fsck -fn.",
        ),
        Para(
            "Without --size the image holds the content plus headroom; sizes take \
             supermin's suffixes (K, M, G). Without --uuid the UUID is derived from the \
             content.",
        ),
    ],
    environment: &[EPOCH_ENV],
    exit_status: &GENERIC_EXIT,
    extra: &[(
        "EXAMPLES",
        &[Code("supermin mkfs ./tree -o tree.img --label data")],
    )],
    see_also: "supermin(1), mke2fs(8), e2fsck(8), virt-make-fs(1)",
};

const KERNEL: Page = Page {
    subcommand: Some("kernel"),
    synopsis: None,
    description: &[Para(
        "supermin kernel says which kernel and modules directory supermin --build would \
         use, and why: every candidate looked at, with its version (read from the kernel \
         image's header, not its file name) and the reason it was chosen or passed over, \
         then the modules the initrd would hold.",
    )],
    environment: &[KERNEL_ENV[0], KERNEL_ENV[1], KERNEL_ENV[2]],
    exit_status: &[
        GENERIC_EXIT[0],
        (
            "1",
            "No usable kernel (or a SUPERMIN_* variable names nothing): one line on standard \
             error says what, and one what to do.",
        ),
    ],
    extra: &[],
    see_also: "supermin(1)",
};

const UPDATE_APPLIANCE: Page = Page {
    subcommand: Some("update-appliance"),
    synopsis: None,
    description: &[
        Para(
            "supermin update-appliance builds libguestfs's appliance once, system-wide, as \
             a fixed appliance (the kernel copied in, README.fixed written), the way \
             update-guestfs-appliance and libguestfs-make-fixed-appliance do, and prints \
             the line that makes libguestfs use it:",
        ),
        Code("export LIBGUESTFS_PATH=DIR"),
        Para(
            "libguestfs's supermin.d is looked for in /usr/lib/x86_64-linux-gnu/guestfs, \
             /usr/lib/aarch64-linux-gnu/guestfs, /usr/lib64/guestfs, /usr/lib/guestfs, \
             /usr/local/lib/guestfs and /usr/local/lib64/guestfs, unless --supermin-d names \
             it. The output is written to disk (fsync) before it replaces DIR atomically.",
        ),
        Para(
            "A fixed appliance does not follow kernel or package upgrades: run the command \
             again after them.",
        ),
    ],
    environment: &[KERNEL_ENV[0], KERNEL_ENV[1], KERNEL_ENV[2], EPOCH_ENV],
    exit_status: &GENERIC_EXIT,
    extra: &[],
    see_also: "supermin(1), guestfs(3), libguestfs-make-fixed-appliance(1)",
};

const DOCTOR: Page = Page {
    subcommand: Some("doctor"),
    synopsis: None,
    description: &[Para(
        "supermin doctor checks, in order, what supermin run and libguestfs need: qemu \
         (found, its version, whether it starts, whether KVM works or why it is not used), \
         the kernel (which one and why, readable by this user, its modules), the cache \
         directory (owner, mode, free space), libguestfs and the variables that steer it; \
         then it builds (or reuses) the default appliance and boots it, timing each phase. \
         Each check is one line, ok or a problem with the way out; on a failed boot the \
         console's last lines and the matching libguestfs FAQ entry follow. --json prints \
         the same for tools.",
    )],
    environment: &[
        CACHE_ENV[0],
        CACHE_ENV[1],
        KERNEL_ENV[0],
        KERNEL_ENV[1],
        KERNEL_ENV[2],
        (
            "LIBGUESTFS_PATH, LIBGUESTFS_BACKEND",
            "Checked for pointing at something usable, when set.",
        ),
    ],
    exit_status: &[
        ("0", "Everything supermin run needs works (libguestfs-only problems are reported, not fatal)."),
        ("1", "Something supermin run needs does not work: the lines above say what and what to do."),
    ],
    extra: &[],
    see_also: "supermin(1), supermin-run(1), libguestfs-test-tool(1)",
};

const CACHE: Page = Page {
    subcommand: Some("cache"),
    synopsis: None,
    description: &[Para(
        "supermin cache list shows what is cached for this user: supermin run's default \
         appliance, libguestfs's appliance.d, and saved machines, with their size on disk, \
         last use and whether they are still fresh for this host. supermin cache gc removes \
         stale entries (and, with --older-than, old ones and saved machines not restored \
         for that long), never one a builder holds the lock of; supermin cache clean removes \
         everything. Both say what they freed; --dry-run only says what they would remove.",
    )],
    environment: &[CACHE_ENV[0], CACHE_ENV[1]],
    exit_status: &GENERIC_EXIT,
    extra: &[],
    see_also: "supermin(1), supermin-run(1)",
};

const PAGES: [Page; 7] = [SUPERMIN, RUN, MKFS, KERNEL, UPDATE_APPLIANCE, DOCTOR, CACHE];

/// `(file name, roff source)` of every page.
pub fn pages(tree: &clap::Command, date: &str) -> Result<Vec<(String, String)>, String> {
    let mut tree = tree.clone();
    tree.build();
    let mut out = Vec::new();
    for page in &PAGES {
        let cmd = match page.subcommand {
            None => tree.clone(),
            Some(name) => tree
                .find_subcommand(name)
                .cloned()
                .ok_or_else(|| format!("the CLI has no subcommand {name} to document"))?,
        };
        out.push(render(page, cmd, date)?);
    }
    // A subcommand without its page is a gap in the documentation: say so at build time.
    for sub in tree.get_subcommands() {
        let documented = PAGES.iter().any(|p| p.subcommand == Some(sub.get_name()));
        if !documented && !sub.is_hide_set() {
            return Err(format!(
                "subcommand {} has no man page text in xtask/src/man.rs",
                sub.get_name()
            ));
        }
    }
    Ok(out)
}

fn render(page: &Page, mut cmd: clap::Command, date: &str) -> Result<(String, String), String> {
    let synopsis = match page.synopsis {
        Some(text) => text.to_string(),
        None => synopsis(&cmd),
    };
    cmd = cmd.override_usage(synopsis);
    let man = Man::new(cmd.clone())
        .date(date)
        .source(format!("supermin-rs {}", env!("CARGO_PKG_VERSION")))
        .manual("User Commands");
    let name = man.get_filename();
    let mut buf: Vec<u8> = Vec::new();
    let io = |e: std::io::Error| format!("cannot render {name}: {e}");
    man.render_title(&mut buf).map_err(io)?;
    man.render_name_section(&mut buf).map_err(io)?;
    man.render_synopsis_section(&mut buf).map_err(io)?;

    let mut roff = Roff::new();
    roff.control("SH", ["DESCRIPTION"]);
    blocks(&mut roff, page.description);
    roff.to_writer(&mut buf).map_err(io)?;

    man.render_options_section(&mut buf).map_err(io)?;
    if cmd.has_subcommands() {
        man.render_subcommands_section(&mut buf).map_err(io)?;
    }

    let mut roff = Roff::new();
    roff.control("SH", ["ENVIRONMENT"]);
    terms(&mut roff, page.environment);
    roff.control("SH", ["EXIT STATUS"]);
    terms(&mut roff, page.exit_status);
    for (heading, body) in page.extra {
        roff.control("SH", [*heading]);
        blocks(&mut roff, body);
    }
    roff.control("SH", ["SEE ALSO"]);
    let own = format!("{}({})", name.trim_end_matches(".1"), 1);
    let see_also: Vec<&str> = page
        .see_also
        .split(", ")
        .filter(|entry| *entry != own)
        .collect();
    roff.text([roman(see_also.join(", "))]);
    roff.to_writer(&mut buf).map_err(io)?;

    let text = String::from_utf8(buf).map_err(|e| format!("{name} is not UTF-8: {e}"))?;
    Ok((name, text))
}

/// One line, `supermin SUB [-x VALUE] ... -- ARGS...`, from the definition: clap_mangen's
/// own leaves out the values options take, and `--` before trailing arguments.
fn synopsis(cmd: &clap::Command) -> String {
    use clap::ArgAction;
    let mut words = vec![cmd
        .get_bin_name()
        .unwrap_or_else(|| cmd.get_name())
        .to_string()];
    let shown = |a: &&clap::Arg| !a.is_hide_set() && !matches!(a.get_action(), ArgAction::Help);
    for arg in cmd
        .get_arguments()
        .filter(|a| !a.is_positional())
        .filter(shown)
    {
        let flag = match (arg.get_short(), arg.get_long()) {
            (Some(short), _) => format!("-{short}"),
            (None, Some(long)) => format!("--{long}"),
            (None, None) => continue,
        };
        let mut word = flag;
        if arg.get_action().takes_values() {
            let value = arg
                .get_value_names()
                .and_then(|names| names.first())
                .map(|n| n.to_string())
                .unwrap_or_else(|| arg.get_id().as_str().to_uppercase());
            word = format!("{word} {value}");
        }
        if !arg.is_required_set() {
            word = format!("[{word}]");
        }
        if matches!(arg.get_action(), ArgAction::Append | ArgAction::Count) {
            word.push_str("...");
        }
        words.push(word);
    }
    for arg in cmd.get_positionals().filter(shown) {
        let value = arg
            .get_value_names()
            .and_then(|names| names.first())
            .map(|n| n.to_string())
            .unwrap_or_else(|| arg.get_id().as_str().to_uppercase());
        let many = matches!(arg.get_action(), ArgAction::Append);
        let mut word = if many { format!("{value}...") } else { value };
        if !arg.is_required_set() {
            word = format!("[{word}]");
        }
        if arg.is_last_set() {
            word = format!("-- {word}");
        }
        words.push(word);
    }
    words.join(" ")
}

fn blocks(roff: &mut Roff, blocks: &[Block]) {
    for block in blocks {
        match block {
            Para(text) => {
                roff.control("PP", []).text([roman(*text)]);
            }
            Terms(items) => terms(roff, items),
            Bullets(items) => {
                for item in *items {
                    roff.control("IP", ["\\(bu", "2"]).text([roman(*item)]);
                }
            }
            Code(lines) => {
                roff.control("PP", [])
                    .control("RS", ["4"])
                    .control("nf", []);
                for line in lines.lines() {
                    roff.text([roman(line)]);
                }
                roff.control("fi", []).control("RE", []);
            }
        }
    }
}

fn terms(roff: &mut Roff, items: &[(&str, &str)]) {
    for (term, text) in items {
        roff.control("TP", [])
            .text([bold(*term)])
            .text([roman(*text)]);
    }
}

/// `YYYY-MM-DD` (UTC) of a Unix time, for the page footer.
pub fn iso_date(secs: i64) -> String {
    // Howard Hinnant's days-to-civil algorithm (proleptic Gregorian calendar).
    let days = secs.div_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_pages() -> Vec<(String, String)> {
        pages(&supermin::cli::command_tree(), "2026-01-01").expect("pages render")
    }

    fn page(name: &str) -> String {
        all_pages()
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, text)| text)
            .unwrap_or_else(|| panic!("no page {name}"))
    }

    #[test]
    fn one_page_for_supermin_and_each_subcommand() {
        let names: Vec<String> = all_pages().into_iter().map(|(n, _)| n).collect();
        assert_eq!(
            names,
            [
                "supermin.1",
                "supermin-run.1",
                "supermin-mkfs.1",
                "supermin-kernel.1",
                "supermin-update-appliance.1",
                "supermin-doctor.1",
                "supermin-cache.1"
            ]
        );
    }

    #[test]
    fn every_page_has_the_sections_a_reader_needs() {
        for (name, text) in all_pages() {
            for section in [
                ".SH NAME",
                ".SH SYNOPSIS",
                ".SH DESCRIPTION",
                ".SH OPTIONS",
                ".SH ENVIRONMENT",
                ".SH \"EXIT STATUS\"",
                ".SH \"SEE ALSO\"",
            ] {
                assert!(text.contains(section), "{name} lacks {section}");
            }
            let title = text.lines().find(|l| l.starts_with(".TH ")).unwrap_or("");
            assert!(
                title.contains(" 2026-01-01 "),
                "{name} is not dated: {title}"
            );
        }
    }

    #[test]
    fn supermin_1_documents_both_grammars_and_the_differences() {
        let text = page("supermin.1");
        assert!(text.contains(".SH \"DIFFERENCES FROM SUPERMIN 5\""));
        assert!(text.contains("\\-\\-if\\-newer"));
        assert!(text.contains("SUPERMIN_KERNEL"));
        for sub in ["run", "mkfs", "kernel", "update\\-appliance"] {
            assert!(text.contains(&format!("supermin\\-{sub}(1)")), "{sub}");
        }
    }

    #[test]
    fn run_page_gives_the_exit_statuses_of_the_command() {
        let text = page("supermin-run.1");
        for status in ["124", "127", "128+N"] {
            assert!(text.contains(status), "{status}");
        }
        assert!(text.contains("\\-\\-accel"));
        assert!(text.contains("SUPERMIN_ACCEL"));
    }

    #[test]
    fn iso_dates() {
        assert_eq!(iso_date(0), "1970-01-01");
        assert_eq!(iso_date(951_782_400), "2000-02-29");
        assert_eq!(iso_date(1_764_547_200), "2025-12-01");
    }
}
