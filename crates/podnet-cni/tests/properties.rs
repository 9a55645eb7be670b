//! Property tests (no root needed): the config and environment parsers never panic and
//! answer the documented codes, and the address pool, driven through ADD, DEL and GC in
//! the order the plugin applies their steps, with a crash at any step and the pool file
//! damaged between calls, never hands one address to two answering interfaces, never
//! loses a live pod's address and leaks nothing past the next GC.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::Path;

use ipnet::Ipv4Net;
use podnet_cni::ipam::{Held, Pool};
use podnet_cni::plugin::host_veth_name;
use podnet_cni::spec::{code, Attachment, CniError, Env, NetConf, NodeConfig};
use proptest::prelude::*;
use serde_json::{json, Map, Value};

// ---------------------------------------------------------------- config and env

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| json!(f)),
        ".{0,12}".prop_map(Value::String),
        prop_oneof![
            Just("10.244.1.0/24"),
            Just("0.0.0.0/0"),
            Just("1.1.0"),
            Just("podnet0"),
            Just("eth0"),
        ]
        .prop_map(|s| json!(s)),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(".{0,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

const KEYS: [&str; 11] = [
    "cniVersion",
    "name",
    "type",
    "bridge",
    "subnet",
    "mtu",
    "dataDir",
    "nodeConfig",
    "prevResult",
    "ipam",
    "cni.dev/valid-attachments",
];

fn valid_conf() -> Value {
    json!({"cniVersion": "1.1.0", "name": "podnet", "type": "podnet-cni", "bridge": "podnet0",
           "subnet": "10.244.1.0/24", "mtu": 1450, "dataDir": "/var/lib/podnet/ipam",
           "nodeConfig": "/run/podnet/node.json"})
}

fn no_node(_: &Path) -> Result<Option<NodeConfig>, CniError> {
    Ok(None)
}

/// Everything the plugin does with a config before it touches the node.
fn read_config(bytes: &[u8]) -> Result<(), u32> {
    let conf = NetConf::parse(bytes).map_err(|e| e.code)?;
    let _ = conf.version_for_errors();
    conf.version().map_err(|e| e.code)?;
    conf.resolve(no_node).map_err(|e| e.code)?;
    Ok(())
}

/// A subnet as text, and whether podnet must accept it.
fn arb_subnet() -> impl Strategy<Value = (String, bool)> {
    (any::<u32>(), 0u8..=32).prop_map(|(bits, len)| {
        let addr = Ipv4Addr::from(bits);
        let net = Ipv4Net::new(addr, len).expect("prefix <= 32");
        let special = [
            ("0.0.0.0", 8),
            ("127.0.0.0", 8),
            ("169.254.0.0", 16),
            ("224.0.0.0", 4),
            ("240.0.0.0", 4),
        ]
        .iter()
        .any(|(a, l)| {
            let s = Ipv4Net::new(a.parse().expect("ip"), *l).expect("net");
            s.contains(&net.network()) || net.contains(&s.network())
        });
        let ok = net.network() == addr && len <= 30 && !special;
        (format!("{addr}/{len}"), ok)
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        let _ = read_config(&bytes);
    }

    #[test]
    fn random_json_never_panics(v in arb_json()) {
        let _ = read_config(v.to_string().as_bytes());
    }

    #[test]
    fn a_mutated_valid_config_never_panics_and_gets_a_spec_code(
        key in prop::sample::select(KEYS.to_vec()),
        value in arb_json(),
        remove in any::<bool>(),
    ) {
        let mut conf = valid_conf();
        let obj = conf.as_object_mut().expect("object");
        if remove { obj.remove(key); } else { obj.insert(key.to_string(), value); }
        if let Err(c) = read_config(conf.to_string().as_bytes()) {
            prop_assert!([1, 2, 6, 7, 11].contains(&c), "code {c} for {conf}");
        }
    }

    #[test]
    fn configs_get_the_code_their_first_fault_calls_for(
        version in prop_oneof![Just(Some("1.1.0")), Just(Some("0.3.1")), Just(Some("9.9.9")), Just(None)],
        name in prop_oneof![Just(Some("podnet")), Just(Some("")), Just(Some("a/b")), Just(None)],
        ipam in any::<bool>(),
        bridge in prop_oneof![Just(None), Just(Some("br0")), Just(Some("bad name"))],
        subnet in prop::option::of(arb_subnet()),
        mtu in prop::option::of(0u32..70000),
    ) {
        let mut obj = Map::new();
        if let Some(v) = version { obj.insert("cniVersion".into(), json!(v)); }
        if let Some(n) = name { obj.insert("name".into(), json!(n)); }
        if ipam { obj.insert("ipam".into(), json!({"type": "host-local"})); }
        if let Some(b) = bridge { obj.insert("bridge".into(), json!(b)); }
        if let Some((s, _)) = &subnet { obj.insert("subnet".into(), json!(s)); }
        if let Some(m) = mtu { obj.insert("mtu".into(), json!(m)); }
        // The order of the checks is the documented one: version, then name, ipam,
        // bridge, subnet (none: try again later), mtu.
        let want = match () {
            _ if version.is_none() => Err(code::INVALID_CONFIG),
            _ if version == Some("9.9.9") => Err(code::INCOMPATIBLE_VERSION),
            _ if name != Some("podnet") => Err(code::INVALID_CONFIG),
            _ if ipam => Err(code::UNSUPPORTED_FIELD),
            _ if bridge == Some("bad name") => Err(code::INVALID_CONFIG),
            _ if subnet.is_none() => Err(code::TRY_AGAIN_LATER),
            _ if !subnet.as_ref().is_some_and(|s| s.1) => Err(code::INVALID_CONFIG),
            _ if mtu.is_some_and(|m| !(68..=65535).contains(&m)) => Err(code::INVALID_CONFIG),
            _ => Ok(()),
        };
        prop_assert_eq!(read_config(Value::Object(obj.clone()).to_string().as_bytes()), want, "{:?}", obj);
    }

    #[test]
    fn environments_parse_or_get_code_4(
        command in prop_oneof![Just("ADD"), Just("DEL"), Just("CHECK"), Just("STATUS"), Just("GC"),
                               Just("VERSION"), Just("add"), Just("")],
        cid in prop_oneof!["[a-zA-Z0-9][a-zA-Z0-9_.-]{0,20}", ".{0,10}"],
        ifname in prop_oneof!["[a-z][a-z0-9]{0,14}", ".{0,20}"],
        netns in prop::option::of(prop_oneof!["/run/netns/[a-z]{1,8}", Just(String::new())]),
        timeout in prop::option::of(prop_oneof!["[0-9]{1,6}", ".{0,5}"]),
        noise in prop::collection::vec(("[A-Z_]{1,10}", ".{0,10}"), 0..4),
    ) {
        let mut vars: Vec<(String, String)> = noise;
        vars.push(("CNI_COMMAND".into(), command.into()));
        vars.push(("CNI_CONTAINERID".into(), cid.clone()));
        vars.push(("CNI_IFNAME".into(), ifname.clone()));
        if let Some(n) = &netns { vars.push(("CNI_NETNS".into(), n.clone())); }
        if let Some(t) = &timeout { vars.push(("PODNET_CNI_LOCK_TIMEOUT_MS".into(), t.clone())); }
        // Noise never names a CNI variable: it comes first and is overridden.
        let got = Env::parse(vars.clone());
        let per_attachment = ["ADD", "DEL", "CHECK"].contains(&command);
        let cid_ok = cid.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
            && cid.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
        let if_ok = !ifname.is_empty() && ifname.len() <= 15 && ifname != "." && ifname != ".."
            && !ifname.chars().any(|c| c == '/' || c == ':' || c.is_whitespace());
        let ns_ok = netns.as_ref().is_some_and(|n| !n.is_empty()) || command == "DEL";
        let timeout_ok = timeout.as_ref().is_none_or(|t| t.parse::<u64>().is_ok());
        let ok = ["ADD", "DEL", "CHECK", "STATUS", "GC", "VERSION"].contains(&command)
            && timeout_ok
            && (!per_attachment || (cid_ok && if_ok && ns_ok));
        match got {
            Ok(env) => {
                prop_assert!(ok, "accepted {:?}", vars);
                prop_assert_eq!(env.container_id, cid);
                prop_assert_eq!(env.ifname, ifname);
                prop_assert_eq!(env.netns, netns.filter(|n| !n.is_empty()));
            }
            Err(e) => {
                prop_assert!(!ok, "refused {:?}: {}", vars, e);
                prop_assert_eq!(e.code, code::INVALID_ENVIRONMENT);
            }
        }
    }
}

// ---------------------------------------------------------------- the pool, simulated

/// A host veth on the simulated node, with what its pod end does.
#[derive(Debug, Clone)]
struct Veth {
    ip: Ipv4Addr,
    attachment: Attachment,
    on_bridge: bool,
    up: bool,
    /// The pod end has the address and is up.
    configured: bool,
    /// ADD's last step was done.
    alias: bool,
}

impl Veth {
    fn answers(&self) -> bool {
        self.on_bridge && self.up && self.configured
    }
}

/// `pool.json` as a crash or damage can leave it.
#[derive(Debug, Clone)]
enum Disk {
    Missing,
    Good(Pool),
    Unreadable,
}

#[derive(Debug, Clone, Copy)]
enum Op {
    Add(usize),
    Del(usize),
    Gc,
    Damage(bool),
}

struct Crashed;

/// Counts the crash points an invocation passes and dies at the chosen one.
struct Steps {
    left: Option<u8>,
}

impl Steps {
    fn point(&mut self) -> Result<(), Crashed> {
        match &mut self.left {
            Some(0) => Err(Crashed),
            Some(n) => {
                *n -= 1;
                Ok(())
            }
            None => Ok(()),
        }
    }
}

struct World {
    subnet: Ipv4Net,
    gateway: Ipv4Addr,
    disk: Disk,
    node: BTreeMap<String, Veth>,
    /// What the runtime believes: attachments whose ADD succeeded and were not deleted.
    live: BTreeMap<Attachment, Ipv4Addr>,
    /// Live attachments whose DEL began but did not succeed yet (the runtime retries it).
    deleting: BTreeSet<Attachment>,
}

fn att(i: usize) -> Attachment {
    Attachment {
        container_id: format!("ctr-{i}"),
        ifname: "eth0".into(),
    }
}

impl World {
    fn new() -> World {
        World {
            subnet: "10.0.0.0/29".parse().expect("net"),
            gateway: Ipv4Addr::new(10, 0, 0, 1),
            disk: Disk::Missing,
            node: BTreeMap::new(),
            live: BTreeMap::new(),
            deleting: BTreeSet::new(),
        }
    }

    /// The plugin's open_pool: a missing or unreadable pool is rebuilt from the veths on
    /// the bridge (the alias, or the pod end's MAC, gives the address), and written.
    fn open_pool(&mut self, steps: &mut Steps) -> Result<Pool, Crashed> {
        if let Disk::Good(p) = &self.disk {
            return Ok(p.clone());
        }
        let held: Vec<Held> = self
            .node
            .iter()
            .filter(|(_, v)| v.on_bridge)
            .map(|(name, v)| Held {
                ip: v.ip,
                host_veth: name.clone(),
                attachment: v.alias.then(|| v.attachment.clone()),
            })
            .collect();
        let pool = Pool::rebuilt(&held);
        self.save(&pool, steps)?;
        Ok(pool)
    }

    /// A durable save: a crash leaves the old pool or the new one.
    fn save(&mut self, pool: &Pool, steps: &mut Steps) -> Result<(), Crashed> {
        steps.point()?;
        self.disk = Disk::Good(pool.clone());
        steps.point()
    }

    fn add(&mut self, a: &Attachment, steps: &mut Steps) -> Result<Option<Ipv4Addr>, Crashed> {
        let mut pool = self.open_pool(steps)?;
        let name = host_veth_name(a);
        if let Some((ip, _)) = pool.find(a) {
            if self
                .node
                .get(&name)
                .is_some_and(|v| v.on_bridge && v.alias && v.ip == ip)
            {
                return Ok(Some(ip));
            }
        }
        let Ok(ip) = pool.allocate(self.subnet, self.gateway, a, None) else {
            return Ok(None);
        };
        self.save(&pool, steps)?;
        // A stale veth of this attachment goes, then the new pair comes, on the bridge.
        self.node.remove(&name);
        steps.point()?;
        self.node.insert(
            name.clone(),
            Veth {
                ip,
                attachment: a.clone(),
                on_bridge: true,
                up: false,
                configured: false,
                alias: false,
            },
        );
        steps.point()?;
        self.veth(&name).up = true;
        steps.point()?;
        self.veth(&name).configured = true;
        steps.point()?;
        self.veth(&name).alias = true;
        Ok(Some(ip))
    }

    fn veth(&mut self, name: &str) -> &mut Veth {
        self.node.get_mut(name).expect("veth")
    }

    fn cut_off(&mut self, name: &str) {
        if let Some(v) = self.node.get_mut(name) {
            v.on_bridge = false;
            v.up = false;
        }
    }

    fn del(&mut self, a: &Attachment, steps: &mut Steps) -> Result<(), Crashed> {
        let name = host_veth_name(a);
        self.cut_off(&name);
        steps.point()?;
        // An unreadable pool is left for the next ADD or GC to rebuild.
        if let Disk::Good(p) = &self.disk {
            let mut pool = p.clone();
            if pool.release(a).is_some() {
                self.save(&pool, steps)?;
            }
        }
        steps.point()?;
        self.node.remove(&name);
        Ok(())
    }

    fn gc(&mut self, steps: &mut Steps) -> Result<(), Crashed> {
        let keep: BTreeSet<Attachment> = self.live.keys().cloned().collect();
        let keep_names: BTreeSet<String> = keep.iter().map(host_veth_name).collect();
        let stale: Vec<String> = self
            .node
            .iter()
            .filter(|(n, v)| !keep_names.contains(*n) && (v.on_bridge || !v.up))
            .map(|(n, _)| n.clone())
            .collect();
        for name in &stale {
            self.cut_off(name);
            steps.point()?;
        }
        let mut pool = self.open_pool(steps)?;
        let freed = pool.release_unless(|a| {
            if a.container_id.is_empty() {
                keep_names.contains(&a.host_veth())
            } else {
                keep.contains(&a.attachment())
            }
        });
        if !freed.is_empty() {
            self.save(&pool, steps)?;
        }
        for name in &stale {
            self.node.remove(name);
            steps.point()?;
        }
        Ok(())
    }

    fn check_no_duplicates(&self) -> Result<(), String> {
        let mut seen = BTreeMap::new();
        for (name, v) in self.node.iter().filter(|(_, v)| v.answers()) {
            if let Some(other) = seen.insert(v.ip, name) {
                return Err(format!("{} answers on {name} and {other}", v.ip));
            }
        }
        Ok(())
    }

    /// Every live pod still answers with the address its ADD returned.
    fn check_nothing_lost(&self) -> Result<(), String> {
        for (a, ip) in self
            .live
            .iter()
            .filter(|(a, _)| !self.deleting.contains(*a))
        {
            let v = self.node.get(&host_veth_name(a));
            if !v.is_some_and(|v| v.answers() && v.ip == *ip) {
                return Err(format!("{a:?} lost {ip}: {v:?}"));
            }
        }
        Ok(())
    }

    /// After a complete GC: the pool holds the addresses of the live pods and of no one
    /// else, and the node only their veths. (A pod whose DEL began is cut off: a rebuild
    /// does not count its address, and its retried DEL removes it.)
    fn check_no_leak(&self) -> Result<(), String> {
        let Disk::Good(pool) = &self.disk else {
            return Err("GC completed and left no readable pool".into());
        };
        for (ip, a) in &pool.allocations {
            if !self.live.keys().any(|l| a.is_of(l)) {
                return Err(format!("{ip} is allocated to {a:?}, which is not live"));
            }
        }
        for (a, ip) in self
            .live
            .iter()
            .filter(|(a, _)| !self.deleting.contains(*a))
        {
            if !pool.allocations.get(ip).is_some_and(|al| al.is_of(a)) {
                return Err(format!("live {a:?} lost its allocation {ip}"));
            }
        }
        let live_names: BTreeSet<String> = self.live.keys().map(host_veth_name).collect();
        if let Some(stray) = self.node.keys().find(|n| !live_names.contains(*n)) {
            return Err(format!("veth {stray} outlived GC"));
        }
        Ok(())
    }
}

fn arb_op() -> impl Strategy<Value = (Op, Option<u8>)> {
    (
        prop_oneof![
            6 => (0usize..8).prop_map(Op::Add),
            3 => (0usize..8).prop_map(Op::Del),
            2 => Just(Op::Gc),
            1 => any::<bool>().prop_map(Op::Damage),
        ],
        // Most calls complete; some die at one of their first dozen steps.
        prop_oneof![3 => Just(None), 2 => (0u8..12).prop_map(Some)],
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn no_address_is_ever_given_twice_lost_or_leaked(ops in prop::collection::vec(arb_op(), 1..60)) {
        let mut w = World::new();
        for (op, crash) in ops {
            let mut steps = Steps { left: crash };
            match op {
                Op::Add(i) => {
                    let a = att(i);
                    match w.add(&a, &mut steps) {
                        Ok(Some(ip)) => {
                            // A repeated ADD returns the same address.
                            if let Some(before) = w.live.insert(a.clone(), ip) {
                                if !w.deleting.remove(&a) {
                                    prop_assert_eq!(before, ip);
                                }
                            }
                        }
                        Ok(None) => {}
                        // The runtime saw the ADD fail: the pod never started.
                        Err(Crashed) => {}
                    }
                }
                Op::Del(i) => {
                    let a = att(i);
                    // The runtime forgets the pod only once DEL succeeded.
                    if w.live.contains_key(&a) {
                        w.deleting.insert(a.clone());
                    }
                    if w.del(&a, &mut steps).is_ok() {
                        w.live.remove(&a);
                        w.deleting.remove(&a);
                    }
                }
                Op::Gc => {
                    if w.gc(&mut steps).is_ok() {
                        if let Err(e) = w.check_no_leak() {
                            prop_assert!(false, "after GC: {}", e);
                        }
                    }
                }
                Op::Damage(missing) => {
                    w.disk = if missing { Disk::Missing } else { Disk::Unreadable };
                }
            }
            if let Err(e) = w.check_no_duplicates().and_then(|()| w.check_nothing_lost()) {
                prop_assert!(false, "after {:?} (crash {:?}): {}", op, crash, e);
            }
        }
    }
}
