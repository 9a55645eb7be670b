//! STATUS: whether an ADD could succeed now. Code 50 when it cannot: no pod subnet yet
//! (the node file is missing), the pool is full, or its lock stays held. An unreadable
//! pool is not a reason: the next ADD rebuilds it.

use super::pool::read_pool;
use super::{resolve, Store};
use crate::ipam::Pool;
use crate::spec::{code, CniError, Env, NetConf, Version};

pub fn status(env: &Env, conf: &NetConf, version: Version) -> Result<(), CniError> {
    if !version.has_status_and_gc() {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!("STATUS needs cniVersion 1.1.0 or later; the config says {version}"),
        ));
    }
    let not_available = |msg: String, details: String| {
        Err(CniError::new(code::NOT_AVAILABLE, msg).with_details(details))
    };
    let r = match resolve(conf) {
        Ok(r) => r,
        Err(e) => return not_available(e.msg, e.details),
    };
    let pool = match read_pool(&Store::new(&r.ipam_dir), env) {
        Ok(p) => p.unwrap_or_default(),
        Err(e) => return not_available(e.msg, e.details),
    };
    let in_use = pool.in_use(r.subnet);
    if in_use >= Pool::capacity(r.subnet) {
        return not_available(
            format!("no free address in {} ({in_use} in use)", r.subnet),
            "delete pods or widen the node's pod CIDR".to_string(),
        );
    }
    Ok(())
}
