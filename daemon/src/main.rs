//! `supermin-daemon`: `/init` (PID 1) of the default appliance. Sets up the
//! system, serves the launcher over the virtio-serial port, and powers off
//! when the launcher says so, goes away, or anything fatal happens; the
//! reason for a failure goes to the console first.

use std::error::Error;
use std::time::Duration;

use supermin_daemon::agent::{serve, AgentConfig, Outcome};
use supermin_daemon::system;
use supermin_protocol::PORT_NAME;

/// How long the virtio-serial port may take to appear after the switch to
/// the root (the initrd loaded virtio_console; the node appears shortly after).
const PORT_WAIT: Duration = Duration::from_secs(10);

fn main() {
    if rustix::process::getpid().as_raw_nonzero().get() != 1 {
        // Powering off is only ever right inside the appliance.
        eprintln!(
            "supermin-daemon: this is the appliance's /init and only runs as PID 1 inside the VM; use `supermin run` on the host"
        );
        std::process::exit(1);
    }
    // A panic is a bug; as PID 1 it would otherwise end in a kernel panic
    // whose message hides ours. Say it and power off like any failure.
    std::panic::set_hook(Box::new(|info| {
        eprintln!("supermin-daemon: internal error (a bug): {info}");
        eprintln!("supermin-daemon: powering off");
        system::power_off()
    }));
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o022));
    match run() {
        Ok(()) => {}
        Err(err) => {
            let mut line = format!("supermin-daemon: error: {err}");
            let mut source = err.source();
            while let Some(s) = source {
                line.push_str(&format!(": {s}"));
                source = s.source();
            }
            eprintln!("{line}");
            eprintln!("supermin-daemon: powering off");
        }
    }
    system::power_off()
}

fn run() -> Result<(), Box<dyn Error>> {
    system::mount_filesystems()?;
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let verbose = system::verbose_cmdline(&cmdline);
    if let Err(err) = system::loopback_up() {
        // Commands that need no network still work: say it, go on.
        let cause = err.source().map(|s| s.to_string()).unwrap_or_default();
        eprintln!("supermin-daemon: warning: {err}: {cause}");
    }
    let port = system::open_port(PORT_NAME, PORT_WAIT)?;
    let uname = rustix::system::uname();
    let info = format!(
        "supermin-daemon {} on Linux {}",
        env!("CARGO_PKG_VERSION"),
        uname.release().to_string_lossy()
    );
    if verbose {
        let uptime = std::fs::read_to_string("/proc/uptime").unwrap_or_default();
        let uptime = uptime.split_whitespace().next().unwrap_or("?");
        eprintln!("supermin-daemon: {info}: serving the host, uptime {uptime} s");
    }
    match serve(port, &AgentConfig::pid1(info, verbose))? {
        Outcome::Shutdown => {}
        Outcome::HostGone => {
            if verbose {
                eprintln!("supermin-daemon: the host went away; powering off");
            }
        }
    }
    Ok(())
}
