//! Whether an image's declared CUDA requirement can run on a GPU, decided before any container is
//! created. Pure: it reads the image's environment (as the NVIDIA Container Toolkit does) and what the
//! inventory knows about the GPU; it never trusts the image.
//!
//! The declaration is the toolkit's: every `NVIDIA_REQUIRE_*` variable must hold (AND); inside one,
//! space-separated alternatives are ORed and comma-separated conditions ANDed, each `key op version`
//! with key `cuda` (the driver's CUDA version), `driver`, `arch` (compute capability) or `brand`, e.g.
//! `cuda>=12.4 brand=tesla,driver>=470,driver<471`. Without one, a legacy image's `CUDA_VERSION=12.4.1`
//! means `cuda>=12.4`; `NVIDIA_DISABLE_REQUIRE=true` turns the check off. No image label carries a
//! requirement in the toolkit's conventions, so labels are not read.
//!
//! Facts the daemon does not know (the brand; everything on a virtual slot without a configured CUDA
//! version) leave a condition undecided, and an image is refused only when every alternative is
//! certainly false. A malformed or oversized declaration is [`Compatibility::Malformed`]: treated as
//! unknown (the run goes on) and reported, never trusted either way.

use std::cmp::Ordering;

/// Longest declaration read, in bytes: the toolkit's own images use a few hundred.
const MAX_DECLARATION_BYTES: usize = 4096;
/// Most conditions read over all declarations.
const MAX_CONDITIONS: usize = 256;
/// Most components of a version (`535.104.05` has three).
const MAX_VERSION_PARTS: usize = 4;

/// What the daemon knows about the GPU a run is placed on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GpuFacts<'a> {
    /// The CUDA version the driver supports (`12.4`).
    pub cuda_version: Option<&'a str>,
    /// The driver version (`550.54.15`).
    pub driver_version: Option<&'a str>,
    /// The compute capability (`9.0`).
    pub compute_capability: Option<&'a str>,
}

/// The outcome of [`check`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compatibility {
    /// The image declares no requirement (or turns the check off with `NVIDIA_DISABLE_REQUIRE`).
    Undeclared,
    /// The requirement holds on this GPU.
    Satisfied,
    /// Some alternative may hold, but the daemon lacks a fact to be sure; the run goes on.
    Undecided {
        /// Which fact was missing.
        why: String,
    },
    /// The declaration is not a valid requirement; treated as unknown, and the run goes on.
    Malformed {
        /// What is wrong with it (bounded, safe to log).
        why: String,
    },
    /// Every alternative is certainly false: the image cannot run on this GPU.
    Unsatisfied {
        /// For the miner: what was required and what the GPU offers (CUDA version, compute capability).
        reason: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Key {
    Cuda,
    Driver,
    Arch,
    Brand,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Condition {
    key: Key,
    op: Op,
    /// Numeric components (`brand` has none).
    version: Vec<u32>,
    /// The condition as written (validated: printable ASCII without spaces).
    text: String,
}

/// Decide whether an image with environment `env` (`KEY=VALUE` entries, as Docker reports them) can run
/// on a GPU with `gpu`'s facts.
pub fn check(env: &[String], gpu: &GpuFacts<'_>) -> Compatibility {
    let vars: Vec<(&str, &str)> = env.iter().filter_map(|e| e.split_once('=')).collect();
    let get = |name: &str| vars.iter().rev().find(|(k, _)| *k == name).map(|(_, v)| *v);
    if get("NVIDIA_DISABLE_REQUIRE").is_some_and(is_true) {
        return Compatibility::Undeclared;
    }
    // One value per variable, the last one set (what `get` and the container toolkit use): newest
    // first, then a stable sort by name keeps that order within a name for `dedup_by` to keep.
    let mut declared: Vec<(&str, &str)> = vars
        .iter()
        .rev()
        .copied()
        .filter(|(k, v)| k.starts_with("NVIDIA_REQUIRE_") && !v.trim().is_empty())
        .collect();
    declared.sort_by(|a, b| a.0.cmp(b.0));
    declared.dedup_by(|later, kept| later.0 == kept.0);
    let legacy;
    if declared.is_empty() {
        match get("CUDA_VERSION").filter(|v| !v.trim().is_empty()) {
            None => return Compatibility::Undeclared,
            Some(v) => match parse_version(v.trim()) {
                Some(parts) => {
                    let major = parts.first().copied().unwrap_or(0);
                    let minor = parts.get(1).copied().unwrap_or(0);
                    legacy = format!("cuda>={major}.{minor}");
                    declared.push(("CUDA_VERSION", legacy.as_str()));
                }
                None => {
                    return Compatibility::Malformed {
                        why: format!("CUDA_VERSION is not a version: {}", shown(v)),
                    };
                }
            },
        }
    }
    let mut parsed = Vec::new();
    let mut conditions = 0;
    for (name, value) in &declared {
        match parse_declaration(value, &mut conditions) {
            Ok(alternatives) => parsed.push((*name, alternatives)),
            Err(why) => {
                return Compatibility::Malformed {
                    why: format!("{name}: {why}"),
                };
            }
        }
    }
    let mut undecided = None;
    for (name, alternatives) in &parsed {
        match evaluate(alternatives, gpu) {
            Truth::True => {}
            Truth::Unknown(why) => {
                undecided.get_or_insert_with(|| format!("{name}: {why}"));
            }
            Truth::False(needs) => {
                return Compatibility::Unsatisfied {
                    reason: format!(
                        "the image's {name} is not met: it needs {needs}; this GPU's driver supports CUDA {} (compute capability {})",
                        gpu.cuda_version.unwrap_or("unknown"),
                        gpu.compute_capability.unwrap_or("unknown"),
                    ),
                };
            }
        }
    }
    match undecided {
        Some(why) => Compatibility::Undecided { why },
        None => Compatibility::Satisfied,
    }
}

/// The toolkit's boolean spelling (Go's `strconv.ParseBool` true values).
fn is_true(v: &str) -> bool {
    matches!(v.trim(), "1" | "t" | "T" | "true" | "TRUE" | "True")
}

/// A hostile value, shortened and made printable for a log line or run record.
fn shown(v: &str) -> String {
    let s: String = v
        .chars()
        .take(64)
        .map(|c| if c.is_ascii_graphic() || c == ' ' { c } else { '?' })
        .collect();
    format!("{s:?}")
}

fn parse_declaration(value: &str, conditions: &mut usize) -> Result<Vec<Vec<Condition>>, String> {
    if value.len() > MAX_DECLARATION_BYTES {
        return Err(format!(
            "longer than {MAX_DECLARATION_BYTES} bytes ({} bytes)",
            value.len()
        ));
    }
    let mut alternatives = Vec::new();
    for alternative in value.split_ascii_whitespace() {
        let mut all = Vec::new();
        for condition in alternative.split(',').filter(|c| !c.is_empty()) {
            *conditions += 1;
            if *conditions > MAX_CONDITIONS {
                return Err(format!("more than {MAX_CONDITIONS} conditions"));
            }
            all.push(
                parse_condition(condition).ok_or_else(|| format!("not a condition: {}", shown(condition)))?,
            );
        }
        if !all.is_empty() {
            alternatives.push(all);
        }
    }
    if alternatives.is_empty() {
        return Err(format!("no condition in {}", shown(value)));
    }
    Ok(alternatives)
}

fn parse_condition(text: &str) -> Option<Condition> {
    if !text.bytes().all(|b| b.is_ascii_graphic()) {
        return None;
    }
    let split = text.find(['=', '!', '<', '>'])?;
    let (key, rest) = text.split_at(split);
    let key = match key {
        "cuda" => Key::Cuda,
        "driver" => Key::Driver,
        "arch" => Key::Arch,
        "brand" => Key::Brand,
        _ => return None,
    };
    let (op, value) = [
        (">=", Op::Ge),
        ("<=", Op::Le),
        ("!=", Op::Ne),
        ("==", Op::Eq),
        ("=", Op::Eq),
        ("<", Op::Lt),
        (">", Op::Gt),
    ]
    .into_iter()
    .find_map(|(sym, op)| rest.strip_prefix(sym).map(|v| (op, v)))?;
    let version = match key {
        Key::Brand => {
            let word = !value.is_empty() && value.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
            if !word || !matches!(op, Op::Eq | Op::Ne) {
                return None;
            }
            Vec::new()
        }
        _ => parse_version(value)?,
    };
    Some(Condition {
        key,
        op,
        version,
        text: text.to_owned(),
    })
}

/// `12`, `12.4`, `535.104.05`: 1 to 4 decimal components, none empty, none overflowing.
fn parse_version(v: &str) -> Option<Vec<u32>> {
    let parts: Vec<&str> = v.split('.').collect();
    if parts.len() > MAX_VERSION_PARTS {
        return None;
    }
    parts
        .iter()
        .map(|p| {
            if p.is_empty() || p.len() > 9 || !p.bytes().all(|b| b.is_ascii_digit()) {
                None
            } else {
                p.parse().ok()
            }
        })
        .collect()
}

/// Compare with missing components as zero (`12.4` == `12.4.0`).
fn compare(a: &[u32], b: &[u32]) -> Ordering {
    let n = a.len().max(b.len());
    (0..n)
        .map(|i| {
            let x = a.get(i).copied().unwrap_or(0);
            let y = b.get(i).copied().unwrap_or(0);
            x.cmp(&y)
        })
        .find(|o| o.is_ne())
        .unwrap_or(Ordering::Equal)
}

enum Truth {
    True,
    /// Which fact was missing.
    Unknown(String),
    /// The first false condition, as written.
    False(String),
}

fn evaluate(alternatives: &[Vec<Condition>], gpu: &GpuFacts<'_>) -> Truth {
    let mut unknown = None;
    let mut first_false = None;
    for all in alternatives {
        let mut this_unknown = None;
        let mut this_false = None;
        for c in all {
            match holds(c, gpu) {
                Some(true) => {}
                Some(false) => {
                    this_false = Some(c.text.clone());
                    break;
                }
                None => {
                    this_unknown.get_or_insert_with(|| c.text.clone());
                }
            }
        }
        match (this_false, this_unknown) {
            (Some(f), _) => {
                first_false.get_or_insert(f);
            }
            (None, Some(u)) => {
                unknown.get_or_insert(u);
            }
            (None, None) => return Truth::True,
        }
    }
    match (unknown, first_false) {
        (Some(u), _) => Truth::Unknown(format!("cannot decide {u} on this GPU")),
        (None, Some(f)) => Truth::False(f),
        // `parse_declaration` never returns an empty list.
        (None, None) => Truth::Unknown("no alternative".to_owned()),
    }
}

fn holds(c: &Condition, gpu: &GpuFacts<'_>) -> Option<bool> {
    let fact = match c.key {
        Key::Cuda => gpu.cuda_version,
        Key::Driver => gpu.driver_version,
        Key::Arch => gpu.compute_capability,
        // NVML's brand is not part of the inventory: always undecided.
        Key::Brand => None,
    }?;
    let have = parse_version(fact.trim())?;
    let order = compare(&have, &c.version);
    Some(match c.op {
        Op::Eq => order.is_eq(),
        Op::Ne => order.is_ne(),
        Op::Lt => order.is_lt(),
        Op::Le => order.is_le(),
        Op::Gt => order.is_gt(),
        Op::Ge => order.is_ge(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const H100: GpuFacts<'static> = GpuFacts {
        cuda_version: Some("12.4"),
        driver_version: Some("550.54.15"),
        compute_capability: Some("9.0"),
    };

    fn env(pairs: &[&str]) -> Vec<String> {
        pairs.iter().map(|s| (*s).to_owned()).collect()
    }

    /// What `nvidia/cuda:12.4.1-runtime-ubuntu22.04` declares.
    const CUDA_12_4_IMAGE: &str = "NVIDIA_REQUIRE_CUDA=cuda>=12.4 brand=tesla,driver>=470,driver<471 brand=unknown,driver>=470,driver<471 brand=nvidia,driver>=535,driver<536";

    #[test]
    fn a_repeated_variable_is_judged_by_its_last_value() {
        let e = env(&["NVIDIA_REQUIRE_CUDA=cuda>=1.0", "NVIDIA_REQUIRE_CUDA=cuda>=99.0"]);
        assert!(matches!(check(&e, &H100), Compatibility::Unsatisfied { .. }));
        let e = env(&["NVIDIA_REQUIRE_CUDA=cuda>=99.0", "NVIDIA_REQUIRE_CUDA=cuda>=1.0"]);
        assert_eq!(check(&e, &H100), Compatibility::Satisfied);
    }

    #[test]
    fn an_official_cuda_image_runs_on_a_driver_that_supports_its_cuda() {
        assert_eq!(check(&env(&[CUDA_12_4_IMAGE]), &H100), Compatibility::Satisfied);
    }

    #[test]
    fn an_older_driver_is_refused_naming_the_gpus_cuda_and_compute_capability() {
        let old = GpuFacts {
            cuda_version: Some("12.2"),
            driver_version: Some("525.60.13"),
            compute_capability: Some("8.6"),
        };
        let Compatibility::Unsatisfied { reason } = check(&env(&[CUDA_12_4_IMAGE]), &old) else {
            panic!("expected a refusal")
        };
        assert!(reason.contains("needs cuda>=12.4"), "{reason}");
        assert!(reason.contains("CUDA 12.2"), "{reason}");
        assert!(reason.contains("compute capability 8.6"), "{reason}");
    }

    #[test]
    fn a_forward_compatible_driver_branch_is_undecided_because_the_brand_is_unknown() {
        // Driver 535 with CUDA 12.2: only the `brand=…,driver>=535,driver<536` alternative may hold.
        let r535 = GpuFacts {
            cuda_version: Some("12.2"),
            driver_version: Some("535.104.05"),
            compute_capability: Some("8.0"),
        };
        assert!(matches!(
            check(&env(&[CUDA_12_4_IMAGE]), &r535),
            Compatibility::Undecided { .. }
        ));
    }

    #[test]
    fn without_facts_about_the_card_nothing_is_refused() {
        let c = check(&env(&["NVIDIA_REQUIRE_CUDA=cuda>=99.0"]), &GpuFacts::default());
        assert!(matches!(c, Compatibility::Undecided { .. }), "{c:?}");
    }

    #[test]
    fn every_declaration_must_hold_and_arch_is_the_compute_capability() {
        let e = env(&["NVIDIA_REQUIRE_CUDA=cuda>=12.0", "NVIDIA_REQUIRE_ARCH=arch>=10.0"]);
        let Compatibility::Unsatisfied { reason } = check(&e, &H100) else {
            panic!("arch 9.0 < 10.0")
        };
        assert!(reason.contains("NVIDIA_REQUIRE_ARCH"), "{reason}");
        assert!(reason.contains("needs arch>=10.0"), "{reason}");
        let e = env(&["NVIDIA_REQUIRE_CUDA=cuda>=12.0", "NVIDIA_REQUIRE_ARCH=arch>=8.0"]);
        assert_eq!(check(&e, &H100), Compatibility::Satisfied);
    }

    #[test]
    fn legacy_cuda_version_means_at_least_that_major_minor() {
        assert_eq!(
            check(&env(&["CUDA_VERSION=12.4.1"]), &H100),
            Compatibility::Satisfied
        );
        assert!(matches!(
            check(&env(&["CUDA_VERSION=12.6.0"]), &H100),
            Compatibility::Unsatisfied { .. }
        ));
        // An explicit requirement wins over the legacy variable.
        assert_eq!(
            check(
                &env(&["CUDA_VERSION=13.0", "NVIDIA_REQUIRE_CUDA=cuda>=11.8"]),
                &H100
            ),
            Compatibility::Satisfied
        );
    }

    #[test]
    fn undeclared_and_disabled_requirements_are_not_checked() {
        assert_eq!(check(&env(&["PATH=/usr/bin"]), &H100), Compatibility::Undeclared);
        assert_eq!(
            check(
                &env(&["NVIDIA_REQUIRE_CUDA=cuda>=99.0", "NVIDIA_DISABLE_REQUIRE=true"]),
                &H100
            ),
            Compatibility::Undeclared
        );
        assert_eq!(
            check(&env(&["NVIDIA_REQUIRE_CUDA="]), &H100),
            Compatibility::Undeclared
        );
    }

    #[test]
    fn malformed_declarations_are_unknown_and_say_why() {
        for bad in [
            "NVIDIA_REQUIRE_CUDA=cuda>=twelve",
            "NVIDIA_REQUIRE_CUDA=gpu>=1.0",
            "NVIDIA_REQUIRE_CUDA=cuda~12",
            "NVIDIA_REQUIRE_CUDA=cuda>=1.2.3.4.5",
            "NVIDIA_REQUIRE_CUDA=cuda>=99999999999",
            "NVIDIA_REQUIRE_CUDA=brand>=tesla",
            "NVIDIA_REQUIRE_CUDA=cuda>=12.\u{0}",
            "CUDA_VERSION=latest",
        ] {
            let c = check(&env(&[bad]), &H100);
            let Compatibility::Malformed { why } = &c else {
                panic!("{bad:?} gave {c:?}")
            };
            assert!(why.chars().count() < 200, "{why}");
        }
        let huge = format!("NVIDIA_REQUIRE_CUDA={}", "cuda>=1.0,".repeat(1000));
        assert!(matches!(
            check(&env(&[&huge]), &H100),
            Compatibility::Malformed { .. }
        ));
        let many = format!("NVIDIA_REQUIRE_CUDA={}", "cuda>=1 ".repeat(300));
        assert!(matches!(
            check(&env(&[&many]), &H100),
            Compatibility::Malformed { .. }
        ));
    }

    proptest! {
        #[test]
        fn arbitrary_declarations_never_panic(value in ".{0,300}", cuda in proptest::option::of("[0-9.]{0,8}")) {
            let gpu = GpuFacts { cuda_version: cuda.as_deref(), ..H100 };
            let _ = check(&[format!("NVIDIA_REQUIRE_CUDA={value}"), format!("CUDA_VERSION={value}")], &gpu);
        }

        #[test]
        fn a_minimum_cuda_is_refused_exactly_when_the_driver_is_older(
            need in (0u32..30, 0u32..10), have in (0u32..30, 0u32..10)
        ) {
            let have_s = format!("{}.{}", have.0, have.1);
            let gpu = GpuFacts { cuda_version: Some(&have_s), ..H100 };
            let c = check(&[format!("NVIDIA_REQUIRE_CUDA=cuda>={}.{}", need.0, need.1)], &gpu);
            if have < need {
                prop_assert!(matches!(c, Compatibility::Unsatisfied { .. }), "{:?}", c);
            } else {
                prop_assert_eq!(c, Compatibility::Satisfied);
            }
        }
    }
}
