//! Reading a table back over nf_tables netlink: its chains with their rules, the elements
//! of one set, and the ruleset generation. A drift check compares these with what the
//! caller committed, so rules and chain definitions come back as the kernel encodes
//! them (opaque bytes, equal exactly when the kernel holds the same thing) and elements
//! as the [`Element`]s a commit takes.

use std::collections::BTreeMap;
use std::io;

use netlink_packet_core::NLM_F_ACK;
use netlink_packet_netfilter::nftables::{
    GenAttribute, GenMessage, NfTablesMessage, TableAttribute, TableMessage,
};

use super::{Element, ElementData, NfTables};

// include/uapi/linux/netfilter/nf_tables.h
const NFT_MSG_NEWCHAIN: u8 = 3;
const NFT_MSG_GETCHAIN: u8 = 4;
const NFT_MSG_NEWRULE: u8 = 6;
const NFT_MSG_GETRULE: u8 = 7;
const NFT_MSG_NEWSETELEM: u8 = 12;
const NFT_MSG_GETSETELEM: u8 = 13;

const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_POLICY: u16 = 5;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_CHAIN_FLAGS: u16 = 10;
const NFTA_CHAIN_USERDATA: u16 = 12;

const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_HANDLE: u16 = 3;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_RULE_USERDATA: u16 = 7;

const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_VERDICT_CHAIN: u16 = 2;
const NFT_JUMP: u32 = -3i32 as u32;
const NFT_GOTO: u32 = -4i32 as u32;

/// A listing that changed under our feet is taken again, this many times at most.
const ATTEMPTS: usize = 5;

/// A table's chains and rules as the kernel holds them at one generation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listing {
    /// The ruleset generation this listing shows (see [`NfTables::generation`]).
    pub generation: u32,
    pub chains: BTreeMap<String, ListedChain>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListedChain {
    /// A base chain's hook, priority, type and policy, and the chain's flags and comment,
    /// as the kernel encodes them; the same bytes mean the same definition.
    pub definition: Vec<u8>,
    /// Its rules in order.
    pub rules: Vec<ListedRule>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListedRule {
    /// What `nft -a list` shows as `# handle N`; not part of what the rule does.
    pub handle: u64,
    /// The rule's expressions and comment as the kernel encodes them; the same bytes mean
    /// the same rule. (A rule with a stateful expression, e.g. `counter`, would differ
    /// from one listing to the next; podnet's rules have none.)
    pub content: Vec<u8>,
}

impl NfTables {
    /// The ruleset generation: the kernel counts every committed transaction in this
    /// namespace, whatever table it touched.
    pub fn generation(&mut self) -> io::Result<u32> {
        let answers = self
            .request(
                NfTablesMessage::GetGen(GenMessage { attributes: vec![] }),
                NLM_F_ACK,
            )
            .map_err(|e| io::Error::new(e.kind(), format!("read the ruleset generation: {e}")))?;
        answers
            .into_iter()
            .find_map(|m| match m {
                NfTablesMessage::NewGen(g) => g.attributes.into_iter().find_map(|a| match a {
                    GenAttribute::Id(id) => Some(id),
                    _ => None,
                }),
                _ => None,
            })
            .ok_or_else(|| io::Error::other("the kernel did not say the ruleset generation"))
    }

    /// The chains and rules of table `inet <table>`, all of one generation; `None` if
    /// the table does not exist. Costs a few requests and what the rules take, not the
    /// elements of the table's sets.
    pub fn list_table(&mut self, table: &str) -> io::Result<Option<Listing>> {
        let ctx = |what: &str, e: io::Error| {
            io::Error::new(e.kind(), format!("{what} of inet {table}: {e}"))
        };
        for _ in 0..ATTEMPTS {
            let before = self.generation()?;
            let get_table = NfTablesMessage::GetTable(TableMessage {
                attributes: vec![TableAttribute::Name(table.to_string())],
            });
            match self.request(get_table, NLM_F_ACK) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
                Err(e) => return Err(ctx("look up the table", e)),
            }
            let mut chains: BTreeMap<String, ListedChain> = BTreeMap::new();
            // Chains cannot be dumped per table: the dump holds every inet chain.
            let listed = self.dump(NFT_MSG_GETCHAIN, &[], |kind, attrs| {
                if kind == NFT_MSG_NEWCHAIN {
                    if let Some((name, chain)) = chain_of(table, attrs) {
                        chains.insert(name, chain);
                    }
                }
            });
            match listed {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => other.map_err(|e| ctx("list the chains", e))?,
            }
            let filter = attribute(NFTA_RULE_TABLE, &nul_terminated(table));
            let mut orphans = false;
            let listed = self.dump(NFT_MSG_GETRULE, &filter, |kind, attrs| {
                if kind != NFT_MSG_NEWRULE {
                    return;
                }
                if let Some((chain, rule)) = rule_of(table, attrs) {
                    match chains.get_mut(&chain) {
                        Some(c) => c.rules.push(rule),
                        // A chain made between the two dumps.
                        None => orphans = true,
                    }
                }
            });
            match listed {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => other.map_err(|e| ctx("list the rules", e))?,
            }
            if !orphans && self.generation()? == before {
                return Ok(Some(Listing {
                    generation: before,
                    chains,
                }));
            }
        }
        Err(io::Error::other(format!(
            "inet {table} kept changing while it was listed ({ATTEMPTS} attempts)"
        )))
    }

    /// The elements of set or map `set` of table `inet <table>`; `None` if there is no
    /// such table or set. Each element's key and value come back as [`super::encode`]
    /// lays them out, so they compare with what was committed.
    pub fn list_elements(&mut self, table: &str, set: &str) -> io::Result<Option<Vec<Element>>> {
        let mut filter = attribute(NFTA_SET_ELEM_LIST_TABLE, &nul_terminated(table));
        filter.extend(attribute(NFTA_SET_ELEM_LIST_SET, &nul_terminated(set)));
        for _ in 0..ATTEMPTS {
            let mut elements = Vec::new();
            let mut bad = None;
            let listed = self.dump(NFT_MSG_GETSETELEM, &filter, |kind, attrs| {
                if kind != NFT_MSG_NEWSETELEM {
                    return;
                }
                for (kind, value) in attrs_of(attrs) {
                    if kind != NFTA_SET_ELEM_LIST_ELEMENTS {
                        continue;
                    }
                    for (kind, element) in attrs_of(value) {
                        if kind != NFTA_LIST_ELEM {
                            continue;
                        }
                        match element_of(element) {
                            Some(e) => elements.push(e),
                            None => bad = Some(element.to_vec()),
                        }
                    }
                }
            });
            match listed {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
                Err(e) => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("list the elements of inet {table} {set}: {e}"),
                    ))
                }
            }
            if let Some(bad) = bad {
                return Err(io::Error::other(format!(
                    "list the elements of inet {table} {set}: an element without a key \
                     ({} bytes)",
                    bad.len()
                )));
            }
            return Ok(Some(elements));
        }
        Err(io::Error::other(format!(
            "inet {table} {set} kept changing while its elements were listed \
             ({ATTEMPTS} attempts)"
        )))
    }
}

/// The attributes of a netlink attribute stream: (type without flags, value).
pub(super) fn attrs_of(mut bytes: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        let header = bytes.get(..4)?;
        let len = u16::from_ne_bytes([header[0], header[1]]) as usize;
        let kind = u16::from_ne_bytes([header[2], header[3]]) & 0x3fff;
        let value = bytes.get(4..len)?;
        bytes = bytes.get(super::align4(len)..).unwrap_or_default();
        Some((kind, value))
    })
}

/// The attributes of a netlink attribute stream, each with its header: (type, bytes).
fn whole_attrs_of(mut bytes: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        let header = bytes.get(..4)?;
        let len = u16::from_ne_bytes([header[0], header[1]]) as usize;
        let kind = u16::from_ne_bytes([header[2], header[3]]) & 0x3fff;
        // Shorter than its own header: the rest cannot be read.
        let whole = bytes.get(..len).filter(|_| len >= 4)?;
        bytes = bytes.get(super::align4(len)..).unwrap_or_default();
        Some((kind, whole))
    })
}

/// One attribute, padded.
fn attribute(kind: u16, value: &[u8]) -> Vec<u8> {
    let len = 4 + value.len();
    let mut out = Vec::with_capacity(super::align4(len));
    out.extend_from_slice(&(len as u16).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(value);
    out.resize(super::align4(len), 0);
    out
}

fn nul_terminated(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

/// A NUL-terminated string attribute.
pub(super) fn string(value: &[u8]) -> String {
    let end = value.iter().position(|&b| b == 0).unwrap_or(value.len());
    String::from_utf8_lossy(&value[..end]).into_owned()
}

fn chain_of(table: &str, attrs: &[u8]) -> Option<(String, ListedChain)> {
    let mut of_table = false;
    let mut name = None;
    let mut definition = Vec::new();
    for (kind, whole) in whole_attrs_of(attrs) {
        let value = &whole[4..];
        match kind {
            NFTA_CHAIN_TABLE => of_table = string(value) == table,
            NFTA_CHAIN_NAME => name = Some(string(value)),
            // Not the handle, the use count or counters: they change without the chain
            // changing.
            NFTA_CHAIN_HOOK | NFTA_CHAIN_POLICY | NFTA_CHAIN_TYPE | NFTA_CHAIN_FLAGS
            | NFTA_CHAIN_USERDATA => definition.extend_from_slice(whole),
            _ => {}
        }
    }
    let name = name.filter(|_| of_table)?;
    Some((
        name,
        ListedChain {
            definition,
            rules: Vec::new(),
        },
    ))
}

fn rule_of(table: &str, attrs: &[u8]) -> Option<(String, ListedRule)> {
    let mut of_table = false;
    let mut chain = None;
    let mut rule = ListedRule::default();
    for (kind, whole) in whole_attrs_of(attrs) {
        let value = &whole[4..];
        match kind {
            NFTA_RULE_TABLE => of_table = string(value) == table,
            NFTA_RULE_CHAIN => chain = Some(string(value)),
            NFTA_RULE_HANDLE => {
                rule.handle = value.try_into().map(u64::from_be_bytes).unwrap_or_default()
            }
            NFTA_RULE_EXPRESSIONS | NFTA_RULE_USERDATA => rule.content.extend_from_slice(whole),
            _ => {}
        }
    }
    Some((chain.filter(|_| of_table)?, rule))
}

/// One NFTA_LIST_ELEM: its key and what it maps to; `None` without a key.
fn element_of(attrs: &[u8]) -> Option<Element> {
    let mut key = None;
    let mut data = ElementData::None;
    for (kind, value) in attrs_of(attrs) {
        match kind {
            NFTA_SET_ELEM_KEY => {
                key = attrs_of(value)
                    .find(|(k, _)| *k == NFTA_DATA_VALUE)
                    .map(|(_, v)| v.to_vec())
            }
            NFTA_SET_ELEM_DATA => data = data_of(value),
            _ => {}
        }
    }
    Some(Element { key: key?, data })
}

fn data_of(attrs: &[u8]) -> ElementData {
    for (kind, value) in attrs_of(attrs) {
        match kind {
            NFTA_DATA_VALUE => return ElementData::Value(value.to_vec()),
            NFTA_DATA_VERDICT => {
                let mut code = None;
                let mut chain = None;
                for (kind, value) in attrs_of(value) {
                    match kind {
                        NFTA_VERDICT_CODE => code = value.try_into().ok().map(u32::from_be_bytes),
                        NFTA_VERDICT_CHAIN => chain = Some(string(value)),
                        _ => {}
                    }
                }
                return match (code, chain) {
                    (Some(NFT_GOTO), Some(chain)) => ElementData::Goto(chain),
                    (Some(NFT_JUMP), Some(chain)) => ElementData::Jump(chain),
                    (Some(code), _) => ElementData::Verdict(code),
                    (None, _) => ElementData::None,
                };
            }
            _ => {}
        }
    }
    ElementData::None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(kind: u16, parts: &[Vec<u8>]) -> Vec<u8> {
        attribute(kind | 0x8000, &parts.concat())
    }

    #[test]
    fn elements_read_back_as_committed() {
        // A verdict map element `10.96.0.10 . tcp . 80 : goto lb-2` as the kernel
        // lists it.
        let key = nested(
            NFTA_SET_ELEM_KEY,
            &[attribute(
                NFTA_DATA_VALUE,
                &[10, 96, 0, 10, 6, 0, 0, 0, 0, 80, 0, 0],
            )],
        );
        let verdict = nested(
            NFTA_DATA_VERDICT,
            &[
                attribute(NFTA_VERDICT_CODE, &NFT_GOTO.to_be_bytes()),
                attribute(NFTA_VERDICT_CHAIN, b"lb-2\0"),
            ],
        );
        let element = [key.clone(), nested(NFTA_SET_ELEM_DATA, &[verdict])].concat();
        assert_eq!(
            element_of(&element),
            Some(Element {
                key: vec![10, 96, 0, 10, 6, 0, 0, 0, 0, 80, 0, 0],
                data: ElementData::Goto("lb-2".into()),
            })
        );
        // `: accept` (NF_ACCEPT is 1) is no goto or jump.
        let accept = nested(
            NFTA_DATA_VERDICT,
            &[attribute(NFTA_VERDICT_CODE, &1u32.to_be_bytes())],
        );
        let element = [key, nested(NFTA_SET_ELEM_DATA, &[accept])].concat();
        assert_eq!(
            element_of(&element).map(|e| e.data),
            Some(ElementData::Verdict(1))
        );
        // No key, no element.
        assert_eq!(element_of(&attribute(NFTA_SET_ELEM_DATA, &[])), None);
    }

    #[test]
    fn a_rule_is_its_expressions_not_its_handle() {
        let rule = |handle: u64, exprs: &[u8]| {
            [
                attribute(NFTA_RULE_TABLE, b"podnet\0"),
                attribute(NFTA_RULE_CHAIN, b"services\0"),
                attribute(NFTA_RULE_HANDLE, &handle.to_be_bytes()),
                nested(NFTA_RULE_EXPRESSIONS, &[exprs.to_vec()]),
            ]
            .concat()
        };
        let (chain, a) = rule_of("podnet", &rule(4, b"abcd")).expect("a rule");
        assert_eq!(chain, "services");
        assert_eq!(a.handle, 4);
        let (_, b) = rule_of("podnet", &rule(9, b"abcd")).expect("a rule");
        assert_eq!(a.content, b.content);
        let (_, c) = rule_of("podnet", &rule(4, b"abce")).expect("a rule");
        assert_ne!(a.content, c.content);
        assert_eq!(rule_of("other", &rule(4, b"abcd")), None);
    }

    #[test]
    fn truncated_attributes_end_the_stream() {
        let mut bytes = attribute(1, b"ok\0");
        bytes.extend_from_slice(&[200, 0, 2, 0, 1]);
        let kinds: Vec<u16> = attrs_of(&bytes).map(|(k, _)| k).collect();
        assert_eq!(kinds, [1]);
        let kinds: Vec<u16> = whole_attrs_of(&bytes).map(|(k, _)| k).collect();
        assert_eq!(kinds, [1]);
        // A length shorter than the header.
        let short = [2, 0, 3, 0, 0, 0, 0, 0];
        assert_eq!(attrs_of(&short).count(), 0);
        assert_eq!(whole_attrs_of(&short).count(), 0);
        assert_eq!(rule_of("podnet", &short), None);
    }
}
