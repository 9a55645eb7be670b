//! The podnet-cni executable: CNI environment and config in, result or error JSON out.
//! Only the result or the error goes to stdout; diagnostics go to stderr.

use std::io::{Read, Write};
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut stdin = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut stdin) {
        eprintln!("podnet-cni: cannot read the network config from stdin: {e}");
    }
    let outcome = podnet_cni::plugin::run(std::env::vars(), &stdin);
    let (out, code) = match outcome {
        Ok(Some(result)) => (Some(result), ExitCode::SUCCESS),
        Ok(None) => (None, ExitCode::SUCCESS),
        Err(failure) => {
            eprintln!("podnet-cni: {}", failure.error);
            (
                Some(failure.error.to_json(&failure.cni_version)),
                ExitCode::FAILURE,
            )
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
    code
}
