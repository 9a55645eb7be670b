//! CNI errors: a well-known code, a message for people and optional details. They are
//! printed as JSON on stdout with a non-zero exit status.

use serde_json::{json, Value};

/// The spec's well-known codes, and podnet's own (100 and up).
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNSUPPORTED_FIELD: u32 = 2;
    pub const UNKNOWN_CONTAINER: u32 = 3;
    pub const INVALID_ENVIRONMENT: u32 = 4;
    pub const IO: u32 = 5;
    pub const DECODE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// STATUS: the plugin cannot serve ADD now.
    pub const NOT_AVAILABLE: u32 = 50;
    /// podnet: the node's pod CIDR has no free address.
    pub const POOL_EXHAUSTED: u32 = 100;
    /// podnet: the pod's interface, address or routes differ from what ADD configured.
    pub const CHECK_FAILED: u32 = 101;
    /// podnet: the kernel refused an operation.
    pub const KERNEL: u32 = 102;
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{msg}{}", if details.is_empty() { String::new() } else { format!(": {details}") })]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>) -> CniError {
        CniError {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    pub fn with_details(mut self, details: impl Into<String>) -> CniError {
        self.details = details.into();
        self
    }

    /// The error object of the spec, in the version the runtime asked for (or the latest
    /// when the request could not be read far enough to know).
    pub fn to_json(&self, cni_version: &str) -> Value {
        let mut v = json!({
            "cniVersion": cni_version,
            "code": self.code,
            "msg": self.msg,
        });
        if !self.details.is_empty() {
            v["details"] = Value::String(self.details.clone());
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_json_has_the_spec_fields() {
        let e = CniError::new(code::INVALID_CONFIG, "bad subnet").with_details("10.0.0.0/33");
        let v = e.to_json("1.0.0");
        assert_eq!(v["code"], 7);
        assert_eq!(v["msg"], "bad subnet");
        assert_eq!(v["details"], "10.0.0.0/33");
        assert_eq!(v["cniVersion"], "1.0.0");
        let bare = CniError::new(code::IO, "x").to_json("1.1.0");
        assert!(bare.get("details").is_none());
    }

    #[test]
    fn codes_are_the_specs() {
        assert_eq!(
            [
                code::INCOMPATIBLE_VERSION,
                code::UNSUPPORTED_FIELD,
                code::UNKNOWN_CONTAINER,
                code::INVALID_ENVIRONMENT,
                code::IO,
                code::DECODE,
                code::INVALID_CONFIG,
                code::TRY_AGAIN_LATER,
                code::NOT_AVAILABLE,
            ],
            [1, 2, 3, 4, 5, 6, 7, 11, 50]
        );
    }
}
