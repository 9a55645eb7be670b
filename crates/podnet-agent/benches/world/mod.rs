//! The benches' cluster: N Services, each with one slice of 10 endpoints.

use std::collections::BTreeMap;

use podnet_model::k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use podnet_model::k8s_openapi::api::discovery::v1::{Endpoint, EndpointPort, EndpointSlice};
use podnet_model::k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

pub fn world(n: usize) -> (Vec<Service>, Vec<EndpointSlice>) {
    let mut svcs = Vec::new();
    let mut slices = Vec::new();
    for i in 0..n {
        let name = format!("s{i}");
        svcs.push(Service {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some("default".into()),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                cluster_ip: Some(format!("10.96.{}.{}", i / 250, i % 250 + 1)),
                ports: Some(vec![ServicePort {
                    port: 80,
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            status: None,
        });
        slices.push(EndpointSlice {
            metadata: ObjectMeta {
                name: Some(format!("{name}-1")),
                namespace: Some("default".into()),
                labels: Some(BTreeMap::from([(
                    "kubernetes.io/service-name".to_string(),
                    name,
                )])),
                ..Default::default()
            },
            address_type: "IPv4".into(),
            endpoints: (0..10)
                .map(|j| Endpoint {
                    addresses: vec![format!("10.{}.{}.{}", 100 + j, i / 250, i % 250 + 1)],
                    ..Default::default()
                })
                .collect(),
            ports: Some(vec![EndpointPort {
                port: Some(8080),
                ..Default::default()
            }]),
        });
    }
    (svcs, slices)
}
