//! podnet-probe: the lab's built-in workload, `podnet probe <command>`.
//!
//! Lab pods run `podnet probe serve` as their container command; tests and people run the
//! clients inside pods to check connectivity, load balancing (which pod answered) and source
//! addresses (what the server saw as the client address, which without NAT is the client's
//! own).
//!
//! - [`args`]: the command line ([`ProbeCommand`]) and the parsers of its values;
//! - [`serve`]: `serve`: HTTP `/hostname`, `/clientip`, `/healthz`, TCP echo and UDP echo;
//! - [`client`]: `get`, `tcp` and `udp`, which fill a [`Report`];
//! - [`report`]: a report shown for a person or as JSON (pure).
//!
//! The JSON report (`-o json`):
//!
//! ```json
//! {"target": "http://web/hostname", "sent": 3, "answered": 2, "failed": 1,
//!  "by_hostname": {"web-1": 1, "web-2": 1},
//!  "attempts": [{"ok": true, "answer": "web-1", "hostname": "web-1", "millis": 1.2},
//!               {"ok": true, "answer": "web-2", "hostname": "web-2", "millis": 0.9},
//!               {"ok": false, "error": "connection refused", "millis": 0.3}]}
//! ```

pub mod args;
pub mod client;
pub mod error;
pub mod report;
pub mod serve;

use std::io::Write;

pub use args::{
    ClientOptions, GetArgs, HostPort, HttpUrl, OutputFormat, ProbeCommand, ServeArgs, TcpArgs,
    UdpArgs,
};
pub use error::ProbeError;
pub use report::{Answer, Attempt, Failure, Report};
pub use serve::{serve_on, spawn_server, Listeners, ServerHandle};

/// Runs the command; returns the process exit code (0 = every request answered, 1 otherwise).
/// `serve` returns only on SIGTERM or SIGINT (with 0) or when it cannot start.
pub fn run(cmd: ProbeCommand) -> Result<u8, ProbeError> {
    match cmd {
        ProbeCommand::Serve(args) => serve::serve(&args).map(|()| 0),
        ProbeCommand::Get(args) => print(&client::get(&args)?, args.opts.output),
        ProbeCommand::Tcp(args) => print(&client::tcp(&args)?, args.opts.output),
        ProbeCommand::Udp(args) => print(&client::udp(&args)?, args.opts.output),
    }
}

/// Writes the report on stdout and returns its exit code.
fn print(report: &Report, format: OutputFormat) -> Result<u8, ProbeError> {
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(report.render(format).as_bytes())
        .and_then(|()| stdout.flush())
        .map_err(ProbeError::Output)?;
    Ok(report.exit_code())
}
