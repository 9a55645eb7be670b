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

#[test]
fn originals_are_kept_once_and_put_back() {
    let mut fx = Fixture::new("sysorig");
    let ns = fx.netns("a");
    let originals = fx.dir().join("originals");
    let keep = originals.clone();
    let (restored, after) = ns
        .run(move || -> std::io::Result<_> {
            sysctl::set("net.ipv4.ip_forward", "0")?;
            sysctl::set("net.ipv4.conf.all.send_redirects", "1")?;
            sysctl::set_keeping_original("net.ipv4.ip_forward", "1", &keep)?;
            // A second change keeps the very first original.
            sysctl::set_keeping_original("net.ipv4.ip_forward", "0", &keep)?;
            sysctl::set_keeping_original("net.ipv4.ip_forward", "1", &keep)?;
            // No change, nothing kept.
            sysctl::set_keeping_original("net.ipv4.conf.all.send_redirects", "1", &keep)?;
            let restored = sysctl::restore_originals(&keep)
                .map_err(|e| std::io::Error::other(e.join("; ")))?;
            Ok((restored, sysctl::get("net.ipv4.ip_forward")?))
        })
        .expect("enter the namespace")
        .expect("sysctls");
    assert_eq!(
        restored,
        vec![("net.ipv4.ip_forward".to_string(), "0".to_string())]
    );
    assert_eq!(after, "0");
    assert!(!originals.exists(), "forgotten once restored");
}
