//! `podnet lab down`: removes everything of the lab, even after a crash.

use podnet_lab::teardown;
use podnet_lab::Layout;

pub fn run(layout: &Layout) -> anyhow::Result<u8> {
    let existed = layout.dir().exists()
        || !podnet_kernel::netns::list_named(&layout.netns_prefix())?.is_empty();
    if !existed {
        println!("lab {} does not exist; nothing to remove", layout.name);
        return Ok(0);
    }
    let removed = teardown::down(layout)?;
    println!(
        "lab {} removed: {} namespaces, {} leftover processes{}",
        layout.name,
        removed.namespaces,
        removed.processes,
        if removed.graceful {
            ""
        } else {
            " (its supervisor was not running)"
        }
    );
    Ok(0)
}
