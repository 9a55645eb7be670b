//! Drift: changes someone else made to podnet's nftables table, found by comparing the
//! kernel with what the agent committed, and what puts it back. Pure: reading and
//! writing the kernel is [`crate::dataplane`]'s.
//!
//! - Elements are compared with the elements the agent wants, key and value as the
//!   kernel stores them; a difference is repaired by one element batch.
//! - Chains and rules are compared with a listing the agent took right after its own
//!   last commit of chains and rules (there is no byte model of the rules it wants yet);
//!   a difference is repaired by writing the whole table again, atomically.
//! - [`Watch`] reads the kernel's notifications: a transaction of someone else's that
//!   touched the table, or lost notifications, call for a comparison.

use std::collections::{BTreeSet, HashMap};
use std::fmt;

use podnet_kernel::nftables::{Change, Element, ElementData, Listing, Notice, Op};

/// The nfgenmsg family of `inet` tables.
const INET: u8 = 1;
/// Elements (or rules) named in a report, per set (or chain); the rest are counted.
const NAMED: usize = 3;

/// One element the agent wants: its value as the kernel stores it, and its key and
/// value as nft writes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted<'a> {
    pub data: ElementData,
    pub key: &'a str,
    /// Empty for a set element.
    pub value: &'a str,
}

impl Wanted<'_> {
    fn text(&self) -> String {
        if self.value.is_empty() {
            self.key.to_string()
        } else {
            format!("{} : {}", self.key, self.value)
        }
    }
}

/// What the agent wants in one set or map, by key as the kernel stores it.
pub type WantSet<'a> = HashMap<Vec<u8>, Wanted<'a>>;

/// What differed, for the repair metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Table,
    Chain,
    Rule,
    Set,
    Element,
}

impl Kind {
    pub const ALL: [Kind; 5] = [
        Kind::Table,
        Kind::Chain,
        Kind::Rule,
        Kind::Set,
        Kind::Element,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Kind::Table => "table",
            Kind::Chain => "chain",
            Kind::Rule => "rule",
            Kind::Set => "set",
            Kind::Element => "element",
        }
    }
}

/// How one set or map differs from what the agent wants.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SetDrift {
    pub set: String,
    /// Elements the kernel lacks, as nft writes them.
    pub missing: Vec<String>,
    /// Elements the agent did not put there.
    pub extra: Vec<String>,
    /// Elements with another value than the agent's: `key : theirs (podnet's: ours)`.
    pub changed: Vec<String>,
    /// Puts the set back: the extra and changed keys deleted, then the missing and
    /// changed elements added.
    pub repair: Vec<Change>,
}

/// Everything that differs between the kernel and what the agent committed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub table_gone: bool,
    pub chains_gone: Vec<String>,
    /// Chains the agent did not make.
    pub chains_foreign: Vec<String>,
    /// Chains whose hook, priority, type, policy or flags changed.
    pub chains_redefined: Vec<String>,
    /// Per chain whose rules differ, how.
    pub rules: Vec<String>,
    pub sets_gone: Vec<String>,
    pub sets: Vec<SetDrift>,
}

impl Report {
    /// The table is gone: nothing else to say.
    pub fn table_gone() -> Report {
        Report {
            table_gone: true,
            ..Report::default()
        }
    }

    pub fn is_empty(&self) -> bool {
        self.kinds().is_empty()
    }

    pub fn kinds(&self) -> BTreeSet<Kind> {
        let mut kinds = BTreeSet::new();
        let mut add = |yes: bool, kind| {
            if yes {
                kinds.insert(kind);
            }
        };
        add(self.table_gone, Kind::Table);
        add(
            !self.chains_gone.is_empty()
                || !self.chains_foreign.is_empty()
                || !self.chains_redefined.is_empty(),
            Kind::Chain,
        );
        add(!self.rules.is_empty(), Kind::Rule);
        add(!self.sets_gone.is_empty(), Kind::Set);
        add(!self.sets.is_empty(), Kind::Element);
        kinds
    }

    /// Whether the table must be written again: anything but elements differs.
    pub fn needs_rewrite(&self) -> bool {
        self.kinds().iter().any(|k| *k != Kind::Element)
    }

    /// The element batch that repairs the elements: every deletion before any addition.
    pub fn element_repair(&self) -> Vec<Change> {
        let all = || self.sets.iter().flat_map(|s| s.repair.iter());
        let deletes = all().filter(|c| c.op == Op::Delete);
        let adds = all().filter(|c| c.op == Op::Add);
        deletes.chain(adds).cloned().collect()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if self.table_gone {
            parts.push("table inet podnet is gone".to_string());
        }
        if !self.chains_gone.is_empty() {
            parts.push(format!(
                "chains of podnet's nftables table are gone ({})",
                self.chains_gone.join(", ")
            ));
        }
        for chain in &self.chains_foreign {
            parts.push(format!("chain {chain} is not podnet's"));
        }
        for chain in &self.chains_redefined {
            parts.push(format!(
                "chain {chain}: its hook, priority, type, policy or flags changed"
            ));
        }
        parts.extend(self.rules.iter().cloned());
        if !self.sets_gone.is_empty() {
            parts.push(format!(
                "sets of podnet's nftables table are gone ({})",
                self.sets_gone.join(", ")
            ));
        }
        for s in &self.sets {
            for (what, items) in [
                ("missing", &s.missing),
                ("not podnet's", &s.extra),
                ("changed", &s.changed),
            ] {
                if !items.is_empty() {
                    parts.push(format!(
                        "{}: {} {what} ({})",
                        s.set,
                        count(items.len(), "element"),
                        named(items)
                    ));
                }
            }
        }
        f.write_str(&parts.join("; "))
    }
}

fn count(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

/// The first few of `items`, and how many more there are.
fn named(items: &[String]) -> String {
    let mut s = items
        .iter()
        .take(NAMED)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if items.len() > NAMED {
        s.push_str(&format!(" and {} more", items.len() - NAMED));
    }
    s
}

/// Compares the elements of `set` in the kernel (`have`) with those the agent wants;
/// `describe` writes a kernel element as nft would. `None` if they are the same.
pub fn compare_set(
    set: &str,
    want: &WantSet,
    have: &[Element],
    describe: impl Fn(&Element) -> String,
) -> Option<SetDrift> {
    let mut drift = SetDrift {
        set: set.to_string(),
        ..SetDrift::default()
    };
    let mut delete = Vec::new();
    let mut add = Vec::new();
    let mut seen: HashMap<&[u8], ()> = HashMap::with_capacity(have.len());
    for e in have {
        seen.insert(&e.key, ());
        match want.get(&e.key) {
            None => {
                drift.extra.push(describe(e));
                delete.push(e.clone());
            }
            Some(w) if w.data != e.data => {
                drift
                    .changed
                    .push(format!("{} (podnet's: {})", describe(e), w.value));
                delete.push(e.clone());
                add.push(Element {
                    key: e.key.clone(),
                    data: w.data.clone(),
                });
            }
            Some(_) => {}
        }
    }
    for (key, w) in want {
        if !seen.contains_key(key.as_slice()) {
            drift.missing.push(w.text());
            add.push(Element {
                key: key.clone(),
                data: w.data.clone(),
            });
        }
    }
    // In a stable order, whatever the maps' order.
    for list in [&mut drift.missing, &mut drift.extra, &mut drift.changed] {
        list.sort();
    }
    delete.sort_by(|a, b| a.key.cmp(&b.key));
    add.sort_by(|a, b| a.key.cmp(&b.key));
    if delete.is_empty() && add.is_empty() {
        return None;
    }
    for (op, elements) in [(Op::Delete, delete), (Op::Add, add)] {
        if !elements.is_empty() {
            drift.repair.push(Change {
                op,
                set: set.to_string(),
                elements,
            });
        }
    }
    Some(drift)
}

/// Compares the chains and rules in the kernel (`have`) with the listing taken after
/// the agent's own last commit of them (`committed`), into `report`.
pub fn compare_chains(committed: &Listing, have: &Listing, report: &mut Report) {
    for (name, chain) in &committed.chains {
        let Some(now) = have.chains.get(name) else {
            report.chains_gone.push(name.clone());
            continue;
        };
        if now.definition != chain.definition {
            report.chains_redefined.push(name.clone());
        }
        let (want, got) = (&chain.rules, &now.rules);
        if want.len() != got.len() {
            report.rules.push(format!(
                "chain {name}: {} where podnet wrote {}",
                count(got.len(), "rule"),
                want.len()
            ));
            continue;
        }
        let changed: Vec<String> = want
            .iter()
            .zip(got)
            .enumerate()
            .filter(|(_, (w, g))| w.content != g.content)
            .map(|(i, (_, g))| format!("{} (handle {})", i + 1, g.handle))
            .collect();
        if !changed.is_empty() {
            report.rules.push(format!(
                "chain {name}: rule {} of {} changed",
                named(&changed),
                want.len()
            ));
        }
    }
    report.chains_foreign.extend(
        have.chains
            .keys()
            .filter(|n| !committed.chains.contains_key(*n))
            .cloned(),
    );
}

/// A comparison to make: why, and which sets' elements it compares. Chains and rules
/// are always compared: listing them costs little, as they hold no elements.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Due {
    pub why: String,
    /// Every set's elements (after lost notifications, in a periodic check)...
    pub all_sets: bool,
    /// ...or those of the sets someone else's transactions touched.
    pub sets: BTreeSet<String>,
}

impl Due {
    /// A comparison of everything.
    pub fn everything(why: &str) -> Due {
        Due {
            why: why.to_string(),
            all_sets: true,
            sets: BTreeSet::new(),
        }
    }

    /// Whether it compares the elements of `set`.
    pub fn covers(&self, set: &str) -> bool {
        self.all_sets || self.sets.contains(set)
    }

    /// Adds `other`'s reasons and sets.
    pub fn merge(&mut self, other: Due) {
        if !self.why.contains(&other.why) {
            if !self.why.is_empty() {
                self.why.push_str("; ");
            }
            self.why.push_str(&other.why);
        }
        self.all_sets |= other.all_sets;
        self.sets.extend(other.sets);
    }
}

/// Reads the kernel's nftables notifications and says when a comparison is due: after
/// a transaction of someone else's touched the table, or when notifications were lost.
/// The agent's own commits are not notified to it (it stops listening while it commits:
/// otherwise the kernel would build a notification for each of its elements).
#[derive(Debug, Clone, Default)]
pub struct Watch {
    table: String,
    /// What the transaction being notified did to the table so far, and to which sets'
    /// elements.
    open: Vec<String>,
    open_sets: BTreeSet<String>,
    due: Option<Due>,
    /// Generations of transactions of others that touched the table since the agent's
    /// own last commit.
    foreign: Vec<u32>,
}

impl Watch {
    pub fn new(table: &str) -> Watch {
        Watch {
            table: table.to_string(),
            ..Watch::default()
        }
    }

    pub fn notice(&mut self, notice: Notice) {
        match notice {
            Notice::Change {
                what,
                family,
                table,
                object,
                ..
            } if family == INET && table == self.table => {
                let change = match &object {
                    Some(o) => format!("{what} {o}"),
                    None => format!("{what} {table}"),
                };
                if !self.open.contains(&change) {
                    self.open.push(change);
                }
                if let (true, Some(set)) =
                    (what.ends_with(" element") || what.ends_with(" set"), object)
                {
                    self.open_sets.insert(set);
                }
            }
            Notice::Change { .. } => {}
            Notice::Generation {
                id, pid, process, ..
            } => {
                let mut changes = std::mem::take(&mut self.open);
                let sets = std::mem::take(&mut self.open_sets);
                // Deleting the table deletes everything in it, one notice each: the
                // table says it all.
                let gone = format!("delete table {}", self.table);
                if changes.contains(&gone) {
                    changes = vec![gone];
                }
                if !changes.is_empty() {
                    self.foreign.push(id);
                    self.suspect(Due {
                        why: format!("{process} (pid {pid}): {}", named(&changes)),
                        all_sets: false,
                        sets,
                    });
                }
            }
            Notice::Lost => {
                // What was open may have been the start of a transaction whose end was
                // lost.
                self.open.clear();
                self.open_sets.clear();
                self.suspect(Due::everything("nftables notifications were lost"));
            }
        }
    }

    /// A comparison is due.
    pub fn suspect(&mut self, due: Due) {
        match &mut self.due {
            Some(d) => d.merge(due),
            None => self.due = Some(due),
        }
    }

    pub fn is_due(&self) -> bool {
        self.due.is_some()
    }

    /// The comparison that is due, if one is; it is not any more.
    pub fn take(&mut self) -> Option<Due> {
        self.due.take()
    }

    /// The agent is about to commit: others' changes notified from now on came after.
    pub fn own_commit(&mut self) {
        self.foreign.clear();
    }

    /// Whether someone else changed the table in a generation after `after`, up to and
    /// including `upto`.
    pub fn foreign_between(&self, after: u32, upto: u32) -> bool {
        self.foreign.iter().any(|g| *g > after && *g <= upto)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use podnet_kernel::nftables::{ListedChain, ListedRule};

    fn want<'a>(items: &[(&[u8], ElementData, &'a str)]) -> WantSet<'a> {
        items
            .iter()
            .map(|(k, d, t)| {
                let (key, value) = t.split_once(" : ").unwrap_or((t, ""));
                let w = Wanted {
                    data: d.clone(),
                    key,
                    value,
                };
                (k.to_vec(), w)
            })
            .collect()
    }

    fn el(key: &[u8], data: ElementData) -> Element {
        Element {
            key: key.to_vec(),
            data,
        }
    }

    fn goto(chain: &str) -> ElementData {
        ElementData::Goto(chain.into())
    }

    fn describe(e: &Element) -> String {
        let v = match &e.data {
            ElementData::Goto(c) => format!(" : goto {c}"),
            _ => String::new(),
        };
        format!("{:?}{v}", e.key)
    }

    #[test]
    fn a_set_as_wanted_does_not_drift() {
        let w = want(&[(b"a", goto("lb-1"), "a : goto lb-1")]);
        assert_eq!(
            compare_set("s", &w, &[el(b"a", goto("lb-1"))], describe),
            None
        );
        assert_eq!(compare_set("s", &WantSet::new(), &[], describe), None);
    }

    #[test]
    fn missing_extra_and_changed_elements_are_named_and_put_back() {
        let w = want(&[
            (b"a", goto("lb-1"), "a : goto lb-1"),
            (b"b", goto("lb-2"), "b : goto lb-2"),
            (b"c", goto("lb-1"), "c : goto lb-1"),
        ]);
        let have = [
            el(b"a", goto("lb-1")),
            el(b"b", ElementData::Verdict(1)),
            el(b"x", goto("lb-1")),
        ];
        let d = compare_set("service-ips", &w, &have, describe).expect("drift");
        assert_eq!(d.missing, ["c : goto lb-1"]);
        assert_eq!(d.extra, ["[120] : goto lb-1"]);
        assert_eq!(d.changed, ["[98] (podnet's: goto lb-2)"]);
        // Deletions first: a changed element is deleted and added back.
        assert_eq!(
            d.repair,
            [
                Change {
                    op: Op::Delete,
                    set: "service-ips".into(),
                    elements: vec![el(b"b", ElementData::Verdict(1)), el(b"x", goto("lb-1"))],
                },
                Change {
                    op: Op::Add,
                    set: "service-ips".into(),
                    elements: vec![el(b"b", goto("lb-2")), el(b"c", goto("lb-1"))],
                },
            ]
        );
        let report = Report {
            sets: vec![d],
            ..Report::default()
        };
        assert_eq!(report.kinds(), BTreeSet::from([Kind::Element]));
        assert!(!report.needs_rewrite(), "elements alone are a batch");
        assert_eq!(
            report.to_string(),
            "service-ips: 1 element missing (c : goto lb-1); \
             service-ips: 1 element not podnet's ([120] : goto lb-1); \
             service-ips: 1 element changed ([98] (podnet's: goto lb-2))"
        );
    }

    #[test]
    fn the_repair_batch_deletes_everything_before_adding_anything() {
        let d = |set: &str| {
            compare_set(
                set,
                &want(&[(b"a", ElementData::None, "a")]),
                &[el(b"b", ElementData::None)],
                describe,
            )
            .expect("drift")
        };
        let report = Report {
            sets: vec![d("one"), d("two")],
            ..Report::default()
        };
        let ops: Vec<(Op, String)> = report
            .element_repair()
            .into_iter()
            .map(|c| (c.op, c.set))
            .collect();
        let op = |op, set: &str| (op, set.to_string());
        assert_eq!(
            ops,
            [
                op(Op::Delete, "one"),
                op(Op::Delete, "two"),
                op(Op::Add, "one"),
                op(Op::Add, "two")
            ]
        );
    }

    #[test]
    fn many_elements_are_counted_past_the_first_few() {
        let keys: Vec<String> = (0..10).map(|i| format!("10.0.0.{i}")).collect();
        let w: WantSet = keys
            .iter()
            .enumerate()
            .map(|(i, k)| {
                let w = Wanted {
                    data: ElementData::None,
                    key: k,
                    value: "",
                };
                (vec![i as u8], w)
            })
            .collect();
        let d = compare_set("nodes", &w, &[], describe).expect("drift");
        let report = Report {
            sets: vec![d],
            ..Report::default()
        };
        assert_eq!(
            report.to_string(),
            "nodes: 10 elements missing (10.0.0.0, 10.0.0.1, 10.0.0.2 and 7 more)"
        );
    }

    /// (chain, definition, [(handle, content)]).
    type Chain<'a> = (&'a str, &'a [u8], &'a [(u64, &'a [u8])]);

    fn listing(chains: &[Chain]) -> Listing {
        Listing {
            generation: 1,
            chains: chains
                .iter()
                .map(|(name, def, rules)| {
                    (
                        name.to_string(),
                        ListedChain {
                            definition: def.to_vec(),
                            rules: rules
                                .iter()
                                .map(|(h, c)| ListedRule {
                                    handle: *h,
                                    content: c.to_vec(),
                                })
                                .collect(),
                        },
                    )
                })
                .collect(),
        }
    }

    fn chains_report(committed: &Listing, have: &Listing) -> Report {
        let mut r = Report::default();
        compare_chains(committed, have, &mut r);
        r
    }

    #[test]
    fn chains_and_rules_compare_with_what_podnet_committed_not_their_handles() {
        let committed = listing(&[
            (
                "services",
                b"",
                &[(1, b"vmap"), (2, b"nodeport"), (3, b"np")],
            ),
            ("postrouting", b"hook", &[(4, b"masq")]),
        ]);
        // The same rules under other handles (the table was written again): no drift.
        let rewritten = listing(&[
            (
                "services",
                b"",
                &[(11, b"vmap"), (12, b"nodeport"), (13, b"np")],
            ),
            ("postrouting", b"hook", &[(14, b"masq")]),
        ]);
        assert!(chains_report(&committed, &rewritten).is_empty());

        let flushed = listing(&[
            ("services", b"", &[]),
            ("postrouting", b"hook", &[(4, b"masq")]),
        ]);
        let r = chains_report(&committed, &flushed);
        assert_eq!(r.kinds(), BTreeSet::from([Kind::Rule]));
        assert!(r.needs_rewrite());
        assert_eq!(
            r.to_string(),
            "chain services: 0 rules where podnet wrote 3"
        );

        let deleted = listing(&[
            ("services", b"", &[(1, b"vmap"), (3, b"np")]),
            ("postrouting", b"hook", &[(4, b"masq")]),
        ]);
        assert_eq!(
            chains_report(&committed, &deleted).to_string(),
            "chain services: 2 rules where podnet wrote 3"
        );

        let replaced = listing(&[
            ("services", b"", &[(1, b"vmap"), (2, b"accept"), (3, b"np")]),
            ("postrouting", b"hook", &[(4, b"masq")]),
        ]);
        assert_eq!(
            chains_report(&committed, &replaced).to_string(),
            "chain services: rule 2 (handle 2) of 3 changed"
        );

        let redone = listing(&[
            (
                "services",
                b"",
                &[(1, b"vmap"), (2, b"nodeport"), (3, b"np")],
            ),
            ("postrouting", b"hook, policy drop", &[(4, b"masq")]),
            ("mine", b"", &[]),
        ]);
        let r = chains_report(&committed, &redone);
        assert_eq!(r.kinds(), BTreeSet::from([Kind::Chain]));
        assert_eq!(
            r.to_string(),
            "chain mine is not podnet's; \
             chain postrouting: its hook, priority, type, policy or flags changed"
        );

        let gone = listing(&[(
            "services",
            b"",
            &[(1, b"vmap"), (2, b"nodeport"), (3, b"np")],
        )]);
        assert_eq!(
            chains_report(&committed, &gone).to_string(),
            "chains of podnet's nftables table are gone (postrouting)"
        );
    }

    fn change(what: &'static str, table: &str, object: &str) -> Notice {
        Notice::Change {
            what,
            family: INET,
            table: table.into(),
            object: Some(object.into()),
            portid: 4242,
        }
    }

    fn generation(id: u32) -> Notice {
        Notice::Generation {
            id,
            portid: 4242,
            pid: 4242,
            process: "nft".into(),
        }
    }

    #[test]
    fn others_changes_to_the_table_call_for_a_comparison() {
        let mut w = Watch::new("podnet");
        assert!(!w.is_due());
        // Another table's transaction, or another family's podnet table: not ours.
        w.notice(change("delete rule", "filter", "input"));
        w.notice(Notice::Change {
            what: "delete rule",
            family: 2,
            table: "podnet".into(),
            object: None,
            portid: 1,
        });
        w.notice(generation(7));
        assert!(!w.is_due());
        // A transaction is known once its generation comes.
        w.notice(change("delete element", "podnet", "service-ips"));
        assert!(!w.is_due());
        w.notice(change("delete element", "podnet", "service-ips"));
        w.notice(generation(8));
        assert!(w.is_due());
        // Only the set it touched needs its elements compared.
        let due = w.take().expect("due");
        assert_eq!(due.why, "nft (pid 4242): delete element service-ips");
        assert!(due.covers("service-ips") && !due.covers("ep-2"));
        assert!(!w.is_due(), "taken");
        // Rules: chains and rules are compared in any case.
        w.notice(change("delete rule", "podnet", "services"));
        w.notice(generation(9));
        let due = w.take().expect("due");
        assert_eq!(due.why, "nft (pid 4242): delete rule services");
        assert!(due.sets.is_empty() && !due.all_sets);

        w.notice(change("delete rule", "podnet", "services"));
        w.notice(Notice::Change {
            what: "delete table",
            family: INET,
            table: "podnet".into(),
            object: None,
            portid: 4242,
        });
        w.notice(generation(10));
        assert_eq!(
            w.take().map(|d| d.why).as_deref(),
            Some("nft (pid 4242): delete table podnet")
        );

        // Two transactions before a look: one comparison, of what both touched.
        w.notice(change("add element", "podnet", "nodes"));
        w.notice(generation(11));
        w.notice(Notice::Lost);
        let due = w.take().expect("due");
        assert_eq!(
            due.why,
            "nft (pid 4242): add element nodes; nftables notifications were lost"
        );
        assert!(due.covers("ep-2"), "after a loss, every set");
    }

    #[test]
    fn a_listing_after_podnet_s_commit_is_spoilt_by_others_changes_in_between() {
        let mut w = Watch::new("podnet");
        w.notice(change("delete rule", "podnet", "services"));
        w.notice(generation(5));
        w.own_commit();
        // podnet committed generation 6 and listed its rules at generation 8.
        assert!(!w.foreign_between(6, 8));
        w.notice(change("add rule", "podnet", "services"));
        w.notice(generation(7));
        assert!(w.foreign_between(6, 8));
        assert!(
            !w.foreign_between(7, 8),
            "listed before: a comparison finds it"
        );
    }
}
