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

/// Whether table `family name` exists.
pub fn table_exists(family: &str, name: &str) -> io::Result<bool> {
    let out = Command::new("nft")
        .args(["list", "tables", family])
        .stderr(Stdio::null())
        .output()
        .map_err(|e| io::Error::new(e.kind(), format!("run nft (install nftables): {e}")))?;
    let want = format!("table {family} {name}");
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.trim() == want))
}

/// The text of table `family name` (`nft list table`), for diagnostics and tests.
pub fn list_table(family: &str, name: &str) -> io::Result<String> {
    let out = Command::new("nft")
        .args(["list", "table", family, name])
        .output()?;
    if !out.status.success() {
        return Err(io::Error::other(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
