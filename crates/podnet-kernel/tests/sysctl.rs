//! Sysctls inside a namespace each test creates and removes. Run as root. Nothing is
//! read or written in the machine's own namespace.

use podnet_kernel::sysctl;
use podnet_testkit::Fixture;

#[test]
fn strict_reverse_path_checking_is_found_on_any_entry() {
    let mut fx = Fixture::new("sysctl");
    let ns = fx.netns("a");
    let strict = |settings: &[(&str, &str)]| {
        ns.run(|| {
            for (key, value) in settings {
                sysctl::set(key, value)?;
            }
            sysctl::strict_rp_filter()
        })
        .expect("enter the namespace")
        .expect("read rp_filter")
    };
    // A new namespace copies the machine's values: start from a known state.
    let off = [
        ("net.ipv4.conf.all.rp_filter", "0"),
        ("net.ipv4.conf.default.rp_filter", "0"),
        ("net.ipv4.conf.lo.rp_filter", "0"),
    ];
    assert_eq!(strict(&off), Vec::<String>::new());
    assert_eq!(
        strict(&[("net.ipv4.conf.lo.rp_filter", "2")]),
        Vec::<String>::new(),
        "loose is not strict"
    );
    assert_eq!(strict(&[("net.ipv4.conf.lo.rp_filter", "1")]), ["lo"]);
    assert_eq!(
        strict(&[("net.ipv4.conf.default.rp_filter", "1")]),
        ["default", "lo"]
    );
}
