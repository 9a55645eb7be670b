//! Properties of the lab's document parser and validation (`parse_numbered_documents`):
//! whatever the input, it never panics and either admits objects or refuses with the
//! document (and, once its kind and name are known, the object) at fault; valid objects
//! are admitted as written and round-trip.

mod generators;

use generators::{any_value, mutate, mutation, to_yaml, valid_batch};
use podnet_model::objects::{parse_numbered_documents, validate, DocumentError};
use podnet_model::Object;
use proptest::prelude::*;
use serde_json::{json, Value};

/// What every answer must be: valid objects numbered within the input, or an error that
/// names a document of it.
fn check_answer(text: &str, result: &Result<Vec<(usize, Object)>, DocumentError>) {
    match result {
        Ok(objects) => {
            let mut last = 0;
            for (n, o) in objects {
                assert!(*n > last, "documents out of order: {n} after {last}");
                last = *n;
                assert_eq!(validate(o), Ok(()), "admitted an invalid object");
            }
        }
        Err(e) => {
            assert!(e.document >= 1, "document 0 in {e}");
            let shown = e.to_string();
            assert!(
                shown.starts_with(&format!("document {}", e.document)),
                "{shown}"
            );
            assert!(!e.msg.is_empty(), "no reason given for input {text:?}");
        }
    }
}

/// The generated document as the parser should admit it: `default` filled in.
fn with_default_namespace(mut v: Value) -> Value {
    if v["kind"] != "Namespace" && v.pointer("/metadata/namespace").is_none() {
        v["metadata"]["namespace"] = json!("default");
    }
    v
}

/// Pieces of YAML and Kubernetes that random text is made of, so it gets past the YAML
/// parser often enough to reach validation.
fn yamlish() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            prop::sample::select(vec![
                "apiVersion: v1\n",
                "apiVersion: apps/v1\n",
                "kind: Pod\n",
                "kind: Service\n",
                "kind: Deployment\n",
                "kind: Node\n",
                "metadata: {name: a}\n",
                "metadata:\n  name: b\n  namespace: x\n",
                "spec: {containers: [{name: c, command: [x]}]}\n",
                "spec: {ports: [{port: 80}]}\n",
                "---\n",
                "- ",
                "{",
                "}",
                "[",
                "]",
                ": ",
                "\"",
                "'",
                "&a ",
                "*a ",
                "!!binary ",
                "  ",
                "\n",
                "~",
                "null",
                "70000",
                "\t",
            ])
            .prop_map(str::to_string),
            "[ -~\\n]{0,8}",
            any::<String>(),
        ],
        0..24,
    )
    .prop_map(|parts| parts.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn any_text_is_admitted_or_refused_by_document(text in yamlish()) {
        let result = parse_numbered_documents(&text);
        check_answer(&text, &result);
    }

    #[test]
    fn any_value_as_a_document_is_admitted_or_refused_by_document(v in any_value()) {
        let text = to_yaml(&[v]);
        let result = parse_numbered_documents(&text);
        check_answer(&text, &result);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn valid_objects_are_admitted_as_written_and_round_trip(
        docs in valid_batch(vec!["node-1".into(), "node-2".into()], 8)
    ) {
        let text = to_yaml(&docs);
        let objects = parse_numbered_documents(&text)
            .unwrap_or_else(|e| panic!("refused a valid batch: {e}\n{text}"));
        prop_assert_eq!(objects.len(), docs.len());
        for (i, ((n, o), doc)) in objects.iter().zip(&docs).enumerate() {
            prop_assert_eq!(*n, i + 1);
            prop_assert_eq!(o.to_json(), with_default_namespace(doc.clone()));
            prop_assert_eq!(&Object::from_json(o.to_json()).expect("round trip"), o);
        }
        // What the lab shows (`get -o yaml`) can be applied again as it is.
        let shown: Vec<Value> = objects.iter().map(|(_, o)| o.to_json()).collect();
        let again = parse_numbered_documents(&to_yaml(&shown)).expect("shown objects parse");
        prop_assert_eq!(again, objects);
    }

    #[test]
    fn mutated_documents_are_admitted_or_refused_naming_document_and_object(
        docs in valid_batch(vec!["node-1".into()], 5),
        which in any::<prop::sample::Index>(),
        m in mutation(),
    ) {
        let mut docs = docs;
        let at = which.index(docs.len());
        mutate(&mut docs[at], &m);
        let text = to_yaml(&docs);
        let result = parse_numbered_documents(&text);
        check_answer(&text, &result);
        match &result {
            // Every document was still valid.
            Ok(objects) => prop_assert_eq!(objects.len(), docs.len()),
            // Only the mutated document changed: it is the one refused, unless it became a
            // duplicate of a later one, refused there.
            Err(e) => {
                prop_assert!(e.document <= docs.len(), "{}", e);
                prop_assert!(e.document == at + 1 || e.msg.contains("twice"), "{}", e);
                let bad = &docs[e.document - 1];
                let kind = bad["kind"].as_str().and_then(podnet_model::Kind::parse);
                let name = bad.pointer("/metadata/name").and_then(Value::as_str);
                if let (Some(_), Some(name)) = (kind, name.filter(|n| !n.is_empty())) {
                    if bad["kind"].as_str() == kind.map(|k| k.name()) {
                        let what = e.what.clone().unwrap_or_default();
                        prop_assert!(what.ends_with(name), "{} does not name {:?}", e, name);
                    }
                }
            }
        }
    }
}
