//! Who may call what on the admin socket, decided from the caller's kernel-reported credentials
//! (SO_PEERCRED) — never from anything the caller sends. Pure rules plus the lookups that feed them.
//!
//! - root (uid 0) and members of `admin.group` may call everything;
//! - members of `admin.read_group` may call the read-only service;
//! - everyone else is refused with the rule they failed.
//!
//! Group membership is the peer process's own credential set (its gid and supplementary groups from
//! `/proc/<pid>/status`), which is what the kernel uses for file permissions; when `/proc` cannot be
//! read the group database is consulted instead.

use crate::config::AdminSettings;

/// What a call needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// The read-only service.
    Read,
    /// The control service.
    Control,
}

/// A connected client, as the kernel describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// Effective uid.
    pub uid: u32,
    /// Every group the process holds (primary first).
    pub groups: Vec<u32>,
}

/// A named group resolved to its gid (`None`: not configured or no such group on this host).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedGroup {
    /// As configured.
    pub name: String,
    /// Resolved gid.
    pub gid: Option<u32>,
}

/// The rules in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminPolicy {
    /// `admin.group`.
    pub control: NamedGroup,
    /// `admin.read_group`.
    pub read: NamedGroup,
}

/// Why a caller was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Denied(pub String);

impl AdminPolicy {
    /// Resolve the configured group names on this host (missing groups are logged and match nobody).
    pub fn resolve(settings: &AdminSettings) -> AdminPolicy {
        let named = |name: &str, key: &str| {
            let gid = if name.is_empty() {
                None
            } else {
                match nix::unistd::Group::from_name(name) {
                    Ok(Some(g)) => Some(g.gid.as_raw()),
                    Ok(None) => {
                        tracing::warn!(
                            group = name,
                            key,
                            "admin group does not exist on this host; it grants nothing"
                        );
                        None
                    }
                    Err(e) => {
                        tracing::warn!(group = name, key, error = %e, "cannot look up admin group; it grants nothing");
                        None
                    }
                }
            };
            NamedGroup {
                name: name.to_owned(),
                gid,
            }
        };
        AdminPolicy {
            control: named(&settings.group, "admin.group"),
            read: named(&settings.read_group, "admin.read_group"),
        }
    }

    /// Whether `caller` may make a call needing `access`; the refusal names the rule.
    pub fn check(&self, caller: &Caller, access: Access) -> Result<(), Denied> {
        let member = |g: &NamedGroup| g.gid.is_some_and(|gid| caller.groups.contains(&gid));
        if caller.uid == 0 || member(&self.control) {
            return Ok(());
        }
        match access {
            Access::Read if member(&self.read) => Ok(()),
            Access::Read => Err(Denied(format!(
                "read-only admin calls need root or membership in group '{}' (admin.read_group) or '{}' (admin.group); uid {} is in neither",
                self.read.name, self.control.name, caller.uid
            ))),
            Access::Control => Err(Denied(format!(
                "control calls need root or membership in group '{}' (admin.group); uid {} is not a member",
                self.control.name, caller.uid
            ))),
        }
    }
}

/// The caller's groups: its primary gid, then the supplementary groups of the peer process.
pub fn caller_groups(uid: u32, gid: u32, pid: Option<i32>) -> Vec<u32> {
    let mut groups = vec![gid];
    let from_proc = pid
        .filter(|p| *p > 0)
        .and_then(|p| std::fs::read_to_string(format!("/proc/{p}/status")).ok())
        .and_then(|status| parse_status_groups(&status));
    match from_proc {
        Some(extra) => groups.extend(extra),
        None => groups.extend(database_groups(uid, gid)),
    }
    groups.dedup();
    groups
}

/// The `Groups:` line of `/proc/<pid>/status`.
pub fn parse_status_groups(status: &str) -> Option<Vec<u32>> {
    let line = status.lines().find_map(|l| l.strip_prefix("Groups:"))?;
    line.split_whitespace().map(|g| g.parse().ok()).collect()
}

fn database_groups(uid: u32, gid: u32) -> Vec<u32> {
    let Ok(Some(user)) = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) else {
        return Vec::new();
    };
    let Ok(name) = std::ffi::CString::new(user.name) else {
        return Vec::new();
    };
    nix::unistd::getgrouplist(&name, nix::unistd::Gid::from_raw(gid))
        .map(|gs| gs.into_iter().map(|g| g.as_raw()).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> AdminPolicy {
        AdminPolicy {
            control: NamedGroup {
                name: "talkhead-admin".into(),
                gid: Some(900),
            },
            read: NamedGroup {
                name: "talkhead".into(),
                gid: Some(901),
            },
        }
    }

    fn caller(uid: u32, groups: &[u32]) -> Caller {
        Caller {
            uid,
            groups: groups.to_vec(),
        }
    }

    #[test]
    fn root_may_do_everything() {
        for access in [Access::Read, Access::Control] {
            assert!(policy().check(&caller(0, &[0]), access).is_ok());
        }
    }

    #[test]
    fn admin_group_members_may_do_everything_even_as_a_supplementary_group() {
        for access in [Access::Read, Access::Control] {
            assert!(policy().check(&caller(1000, &[1000, 900]), access).is_ok());
        }
    }

    #[test]
    fn read_group_members_may_only_read() {
        let c = caller(1000, &[901]);
        assert!(policy().check(&c, Access::Read).is_ok());
        let denied = policy().check(&c, Access::Control).unwrap_err();
        assert!(denied.0.contains("'talkhead-admin' (admin.group)"), "{denied}");
        assert!(denied.0.contains("uid 1000"), "{denied}");
    }

    #[test]
    fn strangers_are_refused_with_the_rule() {
        let c = caller(1234, &[1234]);
        let denied = policy().check(&c, Access::Read).unwrap_err();
        assert!(denied.0.contains("admin.read_group"), "{denied}");
        assert!(policy().check(&c, Access::Control).is_err());
    }

    #[test]
    fn an_unresolved_group_grants_nothing() {
        let mut p = policy();
        p.control.gid = None;
        p.read.gid = None;
        assert!(p.check(&caller(5, &[900, 901]), Access::Read).is_err());
        assert!(p.check(&caller(0, &[0]), Access::Control).is_ok());
    }

    #[test]
    fn proc_status_groups_are_parsed() {
        let status = "Name:\tx\nUid:\t1\t1\t1\t1\nGroups:\t4 24 27 \nNgid:\t0\n";
        assert_eq!(parse_status_groups(status), Some(vec![4, 24, 27]));
        assert_eq!(parse_status_groups("Groups:\t\n"), Some(vec![]));
        assert_eq!(parse_status_groups("Groups:\tx\n"), None);
        assert_eq!(parse_status_groups("Name:\tx\n"), None);
    }

    #[test]
    fn our_own_groups_are_read_from_proc() {
        let me = std::process::id() as i32;
        let uid = nix::unistd::getuid().as_raw();
        let gid = nix::unistd::getgid().as_raw();
        let groups = caller_groups(uid, gid, Some(me));
        assert_eq!(groups.first(), Some(&gid));
        for g in nix::unistd::getgroups().unwrap() {
            assert!(groups.contains(&g.as_raw()), "{g} missing from {groups:?}");
        }
    }
}
