//! nftables through the `nft` tool: one script, one atomic transaction, applied in the
//! network namespace of the calling process. What goes in the script is decided elsewhere.

use std::io::{self, Write};
use std::process::{Command, Stdio};

/// Applies `script` (`nft -f -`) as one transaction: all of it or, on error, none.
pub fn apply(script: &str) -> io::Result<()> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| io::Error::new(e.kind(), format!("run nft (install nftables): {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(script.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "nft refused the transaction: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}
