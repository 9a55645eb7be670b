//! Properties of the lab's admission, from YAML text to the store (`lab apply`): a batch is
//! admitted whole or refused whole, and a refusal names the document and the object;
//! valid batches are admitted, and applying them again changes nothing.

#[path = "../../podnet-model/tests/generators/mod.rs"]
mod generators;

use generators::{mutate, mutation, to_yaml, valid_batch, Mutation};
use podnet_lab::store::{Applied, Store};
use podnet_model::k8s_openapi::api::core::v1::Node;
use podnet_model::k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use podnet_model::objects::parse_numbered_documents;
use podnet_model::{Kind, Object};
use proptest::prelude::*;
use serde_json::{json, Value};

const NODES: [&str; 2] = ["node-1", "node-2"];

fn store() -> Store {
    let mut s = Store::new("10.96.0.0/16".parse().expect("cidr"));
    for n in NODES {
        s.put(Object::Node(Node {
            metadata: ObjectMeta {
                name: Some(n.into()),
                ..ObjectMeta::default()
            },
            ..Node::default()
        }));
    }
    s
}

fn everything(s: &Store) -> Vec<Object> {
    Kind::ALL
        .iter()
        .flat_map(|k| s.list(*k, None))
        .cloned()
        .collect()
}

/// Changes that the parser accepts but admission may refuse: objects in namespaces that do
/// not exist, pods on nodes that do not exist, addresses and ports taken or out of range.
#[derive(Debug, Clone)]
enum Tweak {
    Generic(Mutation),
    DropNamespaces,
    NodeName(prop::sample::Index, &'static str),
    ClusterIp(prop::sample::Index, &'static str),
    NodePort(prop::sample::Index, i64),
}

fn tweak() -> impl Strategy<Value = Tweak> {
    prop_oneof![
        mutation().prop_map(Tweak::Generic),
        Just(Tweak::DropNamespaces),
        (
            any::<prop::sample::Index>(),
            prop::sample::select(vec!["node-1", "node-2", "node-9", ""])
        )
            .prop_map(|(i, n)| Tweak::NodeName(i, n)),
        (
            any::<prop::sample::Index>(),
            prop::sample::select(vec![
                "10.96.0.10",
                "10.96.0.11",
                "10.96.0.0",
                "10.96.255.255",
                "10.1.0.1",
                "None",
                ""
            ])
        )
            .prop_map(|(i, ip)| Tweak::ClusterIp(i, ip)),
        (
            any::<prop::sample::Index>(),
            prop::sample::select(vec![30000i64, 30001, 32767])
        )
            .prop_map(|(i, p)| Tweak::NodePort(i, p)),
    ]
}

fn apply_tweak(docs: &mut Vec<Value>, t: &Tweak) {
    let of_kind = |docs: &Vec<Value>, kind: &str| -> Vec<usize> {
        (0..docs.len())
            .filter(|i| docs[*i]["kind"] == kind)
            .collect()
    };
    match t {
        Tweak::Generic(m) => {
            if let Some(d) = docs.last_mut() {
                mutate(d, m);
            }
        }
        Tweak::DropNamespaces => docs.retain(|d| d["kind"] != "Namespace"),
        Tweak::NodeName(i, n) => {
            let pods = of_kind(docs, "Pod");
            if !pods.is_empty() {
                docs[*i.get(&pods)]["spec"]["nodeName"] = json!(n);
            }
        }
        Tweak::ClusterIp(i, ip) => {
            let svcs = of_kind(docs, "Service");
            if !svcs.is_empty() {
                docs[*i.get(&svcs)]["spec"]["clusterIP"] = json!(ip);
            }
        }
        Tweak::NodePort(i, p) => {
            let svcs = of_kind(docs, "Service");
            if !svcs.is_empty() {
                let spec = &mut docs[*i.get(&svcs)]["spec"];
                spec["type"] = json!("NodePort");
                if let Some(port) = spec["ports"].get_mut(0) {
                    port["nodePort"] = json!(p);
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn valid_batches_are_admitted_and_unchanged_when_applied_again(
        docs in valid_batch(NODES.iter().map(|n| n.to_string()).collect(), 10)
    ) {
        let mut s = store();
        let yaml = to_yaml(&docs);
        let parsed = parse_numbered_documents(&yaml).expect("valid documents");
        let applied = s
            .apply(parsed.clone())
            .unwrap_or_else(|e| panic!("refused a valid batch: {e}\n{yaml}"));
        prop_assert_eq!(applied.len(), docs.len());
        for ((r, _), (_, o)) in applied.iter().zip(&parsed) {
            prop_assert_eq!(r, &o.reference());
            prop_assert!(s.get(r).is_some(), "{} is not in the store", r);
        }
        let again = s.apply(parsed).expect("the same batch again");
        prop_assert!(
            again.iter().all(|(_, a)| *a == Applied::Unchanged),
            "applying the same batch again changed {:?}",
            again
        );
    }

    #[test]
    fn batches_are_admitted_whole_or_refused_whole_naming_document_and_object(
        first in valid_batch(NODES.iter().map(|n| n.to_string()).collect(), 6),
        batches in prop::collection::vec(
            (valid_batch(vec!["node-1".into(), "node-9".into()], 6), tweak()),
            1..4,
        ),
    ) {
        let mut s = store();
        // Something to conflict with.
        s.apply(parse_numbered_documents(&to_yaml(&first)).expect("valid"))
            .expect("a valid batch");
        for (mut docs, t) in batches {
            apply_tweak(&mut docs, &t);
            let Ok(parsed) = parse_numbered_documents(&to_yaml(&docs)) else {
                continue; // the parser's refusals are its own properties' business
            };
            let before = everything(&s);
            let version = s.resource_version();
            match s.apply(parsed.clone()) {
                Ok(applied) => {
                    prop_assert_eq!(applied.len(), parsed.len());
                    for (r, _) in &applied {
                        prop_assert!(s.get(r).is_some(), "{} is not in the store", r);
                    }
                }
                Err(e) => {
                    prop_assert_eq!(s.resource_version(), version, "{} half-applied", e);
                    prop_assert!(everything(&s) == before, "{} changed the store", e);
                    let (_, refused) = parsed
                        .iter()
                        .find(|(n, _)| *n == e.document)
                        .unwrap_or_else(|| panic!("{e}: no such document"));
                    prop_assert_eq!(e.what.clone(), Some(refused.reference().to_string()));
                    prop_assert!(
                        e.to_string().starts_with(&format!("document {} ({}): ", e.document, refused.reference())),
                        "{}", e
                    );
                }
            }
        }
    }
}
