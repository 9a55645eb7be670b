//! `podnet lab down`: removes everything of the lab, even after a crash or with its
//! supervisor stopped.

use podnet_lab::teardown;
use podnet_lab::Layout;

pub fn run(layout: &Layout) -> anyhow::Result<u8> {
    let removed = teardown::down(layout)?;
    println!("{}", removed.summary());
    Ok(0)
}
