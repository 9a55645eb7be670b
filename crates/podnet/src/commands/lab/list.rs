//! `podnet lab list`.

use std::time::Duration;

use podnet_lab::client::ClientError;
use podnet_lab::layout::LabConfig;
use podnet_lab::{teardown, Client, Layout};

use crate::output::{print, table};

pub fn run() -> anyhow::Result<u8> {
    let names = teardown::lab_names();
    if names.is_empty() {
        eprintln!("No labs. Start one with `podnet lab up`.");
        return Ok(0);
    }
    let mut t = table(&[
        "NAME",
        "STATUS",
        "NODES",
        "BACKEND",
        "POD-CIDR",
        "SERVICE-CIDR",
    ]);
    for name in names {
        let Ok(layout) = Layout::new(&name) else {
            continue;
        };
        let config: Option<LabConfig> = std::fs::read(layout.config_file())
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        // A status answer takes milliseconds; don't let one stopped lab hold up the list.
        let client = Client::new(&layout).with_timeout(Duration::from_secs(2));
        let status = match client.status() {
            Ok(st) => st.phase,
            Err(ClientError::Timeout { .. }) => {
                "not answering (`podnet lab down` removes it)".into()
            }
            Err(_) => "down (run `podnet lab down` to clean up)".into(),
        };
        let c = |f: fn(&LabConfig) -> String| config.as_ref().map(f).unwrap_or_else(|| "?".into());
        t.add_row(vec![
            name.clone(),
            status,
            c(|c| c.nodes.to_string()),
            c(|c| c.backend.clone()),
            c(|c| c.pod_cidr.to_string()),
            c(|c| c.service_cidr.to_string()),
        ]);
    }
    print(&t);
    Ok(0)
}
