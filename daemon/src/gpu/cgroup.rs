//! Container → host PIDs through the container's cgroup: `/proc/<init pid>/cgroup` names the cgroup,
//! its `cgroup.procs` lists every process of the container as host PIDs (what NVML reports). The
//! parser is pure; the two reads are the only IO. It never writes to `/proc` or `/sys`.

use std::path::{Path, PathBuf};

/// The cgroup path of a process from its `/proc/<pid>/cgroup`: the unified (v2) entry `0::<path>`,
/// else the v1 `pids` or `memory` controller's path.
pub fn parse_proc_cgroup(contents: &str) -> Option<(CgroupVersion, &str)> {
    let mut v1 = None;
    for line in contents.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        if id == "0" && controllers.is_empty() {
            return Some((CgroupVersion::V2, path));
        }
        if v1.is_none() && controllers.split(',').any(|c| c == "pids" || c == "memory") {
            let controller = if controllers.split(',').any(|c| c == "pids") {
                "pids"
            } else {
                "memory"
            };
            v1 = Some((CgroupVersion::V1(controller), path));
        }
    }
    v1
}

/// Which cgroup hierarchy a path belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    /// The unified hierarchy.
    V2,
    /// A v1 controller's hierarchy (its name).
    V1(&'static str),
}

/// The `cgroup.procs` file of a cgroup under `root` (normally `/sys/fs/cgroup`).
pub fn procs_file(root: &Path, version: CgroupVersion, path: &str) -> PathBuf {
    let rel = path.trim_start_matches('/');
    match version {
        CgroupVersion::V2 => root.join(rel).join("cgroup.procs"),
        CgroupVersion::V1(controller) => root.join(controller).join(rel).join("cgroup.procs"),
    }
}

/// Parse a `cgroup.procs` listing.
pub fn parse_procs(contents: &str) -> Vec<u32> {
    contents.lines().filter_map(|l| l.trim().parse().ok()).collect()
}

/// Where to find a container's processes, resolved once from its init PID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerProcs {
    procs: PathBuf,
    init_pid: u32,
}

impl ContainerProcs {
    /// Resolve from the container's init PID (Docker's `State.Pid`).
    pub fn resolve(init_pid: u32) -> std::io::Result<ContainerProcs> {
        let text = std::fs::read_to_string(format!("/proc/{init_pid}/cgroup"))?;
        let (version, path) = parse_proc_cgroup(&text).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("no cgroup entry in /proc/{init_pid}/cgroup"),
            )
        })?;
        Ok(ContainerProcs {
            procs: procs_file(Path::new("/sys/fs/cgroup"), version, path),
            init_pid,
        })
    }

    /// The container's processes now, as host PIDs (at least the init PID if the listing fails).
    pub fn pids(&self) -> Vec<u32> {
        match std::fs::read_to_string(&self.procs) {
            Ok(text) => parse_procs(&text),
            Err(_) => vec![self.init_pid],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v2_entry_wins() {
        let text = "0::/system.slice/docker-abc.scope\n";
        assert_eq!(
            parse_proc_cgroup(text),
            Some((CgroupVersion::V2, "/system.slice/docker-abc.scope"))
        );
        assert_eq!(
            procs_file(
                Path::new("/sys/fs/cgroup"),
                CgroupVersion::V2,
                "/system.slice/docker-abc.scope"
            ),
            Path::new("/sys/fs/cgroup/system.slice/docker-abc.scope/cgroup.procs")
        );
    }

    #[test]
    fn v1_falls_back_to_the_pids_controller() {
        let text = "12:memory:/docker/abc\n11:pids:/docker/abc\n1:name=systemd:/docker/abc\n";
        assert_eq!(
            parse_proc_cgroup(text),
            Some((CgroupVersion::V1("memory"), "/docker/abc"))
        );
        let text = "11:cpu,pids:/docker/x\n";
        let (v, p) = parse_proc_cgroup(text).unwrap_or((CgroupVersion::V2, ""));
        assert_eq!(
            procs_file(Path::new("/r"), v, p),
            Path::new("/r/pids/docker/x/cgroup.procs")
        );
        assert_eq!(parse_proc_cgroup("garbage"), None);
    }

    #[test]
    fn procs_listing_ignores_junk() {
        assert_eq!(parse_procs("12\n 34 \nx\n\n"), vec![12, 34]);
    }

    #[test]
    fn this_process_resolves_to_a_cgroup_listing_itself() {
        let me = std::process::id();
        if let Ok(procs) = ContainerProcs::resolve(me) {
            assert!(procs.pids().contains(&me) || procs.pids() == vec![me]);
        }
    }
}
