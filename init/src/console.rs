//! The console: messages to the user, and the way out when we fail.
//!
//! The kernel gives PID 1 `/dev/console` as fds 0-2 when the initramfs has that node; if
//! it did not, we open it ourselves once devtmpfs is mounted, so failures are never
//! silent. Writes ignore errors: there is nobody else to tell. A failed boot powers the
//! machine off instead of hanging (with `-no-reboot` qemu then exits), after the serial
//! line has drained, so the last message is not cut off.

use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd};

pub const PREFIX: &str = "supermin-init";

/// Prints one line on the console: `supermin-init: <message>`.
pub fn say(message: std::fmt::Arguments<'_>) {
    let mut err = io::stderr().lock();
    let _ = writeln!(err, "{PREFIX}: {message}");
}

#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => { $crate::console::say(format_args!($($arg)*)) };
}

/// Like [`say!`], only when `verbose` is true.
#[macro_export]
macro_rules! verbose {
    ($on:expr, $($arg:tt)*) => {
        if $on { $crate::console::say(format_args!($($arg)*)) }
    };
}

/// Makes sure fds 0, 1 and 2 are the console when the kernel could not open it for us.
pub fn ensure_console() {
    if rustix::io::fcntl_getfd(io::stderr().as_fd()).is_ok() {
        return;
    }
    let Ok(console) = rustix::fs::open(
        "/dev/console",
        rustix::fs::OFlags::RDWR | rustix::fs::OFlags::NOCTTY,
        rustix::fs::Mode::empty(),
    ) else {
        return;
    };
    let _ = rustix::stdio::dup2_stdin(&console);
    let _ = rustix::stdio::dup2_stdout(&console);
    let _ = rustix::stdio::dup2_stderr(&console);
    // If open() returned fd 0-2 itself, dropping `console` would close a stdio fd.
    if console.as_raw_fd() <= 2 {
        std::mem::forget(console);
    }
}

/// Gives up: says why, how to get more detail, flushes the console and powers off.
/// Never returns. Outside PID 1 (a developer running the binary by hand) it exits instead.
pub fn fail(message: std::fmt::Arguments<'_>, hint: Option<&str>) -> ! {
    say(format_args!("error: {message}"));
    if let Some(hint) = hint {
        say(format_args!("hint: {hint}"));
    }
    power_off()
}

pub fn power_off() -> ! {
    say(format_args!("powering off"));
    let _ = io::stderr().flush();
    rustix::fs::sync();
    // Waits until the UART has sent everything; fails harmlessly if fd 2 is not a tty.
    let _ = rustix::termios::tcdrain(io::stderr().as_fd());
    if rustix::process::getpid().is_init() {
        let _ = rustix::system::reboot(rustix::system::RebootCommand::PowerOff);
    }
    // reboot() only returns on failure; exiting PID 1 makes the kernel panic, and
    // panic=1 on the command line (libguestfs sends it) reboots, which -no-reboot ends.
    std::process::exit(1)
}
