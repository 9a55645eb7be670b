//! Output a person reads: tidy tables and ages.

use comfy_table::presets::NOTHING;
use comfy_table::{ContentArrangement, Table};
use podnet_model::k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// A borderless table like kubectl's.
pub fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(header.to_vec());
    for c in t.column_iter_mut() {
        c.set_padding((0, 3));
    }
    t
}

/// Prints a table without trailing spaces.
pub fn print(t: &Table) {
    for line in t.to_string().lines() {
        println!("{}", line.trim_end());
    }
}

/// `5s`, `3m`, `2h`, `4d`, as kubectl shows ages.
pub fn age(t: Option<&Time>) -> String {
    let Some(t) = t else {
        return "<unknown>".into();
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default();
    let s = (now - t.0.as_second()).max(0);
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}
