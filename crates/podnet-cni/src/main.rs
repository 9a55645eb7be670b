//! The podnet-cni executable: CNI environment and config in, result or error JSON out.
//! Only the result or the error goes to stdout; diagnostics go to stderr.

use std::fs::File;
use std::io::{Read, Write};
use std::process::ExitCode;

use nix::unistd::{dup2_stderr, dup2_stdin, dup2_stdout, fork, setsid, ForkResult};
use podnet_cni::plugin::{self, Deferred};

fn main() -> ExitCode {
    let mut stdin = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut stdin) {
        eprintln!("podnet-cni: cannot read the network config from stdin: {e}");
    }
    let (out, deferred, code) = match plugin::run(std::env::vars(), &stdin) {
        Ok(s) => (s.output, s.deferred, ExitCode::SUCCESS),
        Err(failure) => {
            eprintln!("podnet-cni: {}", failure.error);
            let json = failure.error.to_json(&failure.cni_version);
            (Some(json), None, ExitCode::FAILURE)
        }
    };
    if let Some(out) = out {
        let mut stdout = std::io::stdout().lock();
        let written = serde_json::to_writer(&mut stdout, &out)
            .map_err(std::io::Error::from)
            .and_then(|()| stdout.write_all(b"\n"))
            .and_then(|()| stdout.flush());
        if let Err(e) = written {
            eprintln!("podnet-cni: cannot write to stdout: {e}");
            return ExitCode::FAILURE;
        }
    }
    if let Some(work) = deferred {
        finish_in_background(work);
    }
    code
}

/// Runs `work` in a detached child so the runtime gets its answer now. The child lets go
/// of stdin, stdout and stderr first: the runtime reads our stdout until every copy of it
/// is closed. If there is no child, the work is done here.
fn finish_in_background(work: Deferred) {
    // SAFETY: the plugin is single-threaded, so the child may run any code.
    match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            let _ = setsid();
            if let Ok(null) = File::options().read(true).write(true).open("/dev/null") {
                let _ = dup2_stdin(&null);
                let _ = dup2_stdout(&null);
                let _ = dup2_stderr(&null);
            }
            let _ = work.run();
            std::process::exit(0);
        }
        Ok(ForkResult::Parent { .. }) => {}
        Err(_) => {
            if let Err(e) = work.run() {
                eprintln!("podnet-cni: {e}");
            }
        }
    }
}
