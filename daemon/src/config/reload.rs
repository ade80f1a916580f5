//! Configuration reload (SIGHUP, `talkheadctl reload`): which keys changed between two validated
//! configurations, and which of them can take effect without a restart. Pure: the daemon applies.

use super::{Settings, render_effective};
use std::collections::BTreeMap;

/// Keys whose new value the running daemon applies at once; every other change needs a restart.
pub const RELOADABLE: &[&str] = &["auth.allowed_hotkeys", "admin.group", "admin.read_group"];

/// Dotted keys whose effective values differ, sorted.
pub fn changed_keys(old: &Settings, new: &Settings) -> Vec<String> {
    let (a, b) = (flatten(old), flatten(new));
    let mut keys: Vec<String> = a
        .keys()
        .chain(b.keys())
        .filter(|k| a.get(*k) != b.get(*k))
        .cloned()
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

/// Split changed keys into (applied at once, needs a restart).
pub fn partition(changed: Vec<String>) -> (Vec<String>, Vec<String>) {
    changed
        .into_iter()
        .partition(|k| RELOADABLE.contains(&k.as_str()))
}

/// SHA-256 (hex) of the effective configuration, for `status`: equal digests, equal behaviour.
pub fn digest(settings: &Settings) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(render_effective(settings).as_bytes()))
}

fn flatten(settings: &Settings) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    if let Ok(table) = render_effective(settings).parse::<toml::Table>() {
        walk("", &toml::Value::Table(table), &mut out);
    }
    out
}

fn walk(prefix: &str, value: &toml::Value, out: &mut BTreeMap<String, String>) {
    match value {
        toml::Value::Table(t) => {
            for (k, v) in t {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                walk(&key, v, out);
            }
        }
        other => {
            out.insert(prefix.to_owned(), other.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ConfigLocation, load};

    fn settings(toml: &str) -> Settings {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.toml");
        std::fs::write(&path, toml).unwrap();
        load(&ConfigLocation::Explicit(path), &|_| None).unwrap().settings
    }

    #[test]
    fn only_changed_keys_are_reported_and_split_by_reloadability() {
        let hk = "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY";
        let a = settings("[admin]\ngroup = \"ops\"\n");
        let b = settings(&format!(
            "[admin]\ngroup = \"ops2\"\n[auth]\nallowed_hotkeys = [\"{hk}\"]\n[http]\nmax_batch = 7\n"
        ));
        let changed = changed_keys(&a, &b);
        assert_eq!(
            changed,
            vec!["admin.group", "auth.allowed_hotkeys", "http.max_batch"]
        );
        let (applied, restart) = partition(changed);
        assert_eq!(applied, vec!["admin.group", "auth.allowed_hotkeys"]);
        assert_eq!(restart, vec!["http.max_batch"]);
        assert!(changed_keys(&a, &a).is_empty());
        assert_eq!(digest(&a), digest(&settings("[admin]\ngroup = \"ops\"\n")));
        assert_ne!(digest(&a), digest(&b));
    }
}
