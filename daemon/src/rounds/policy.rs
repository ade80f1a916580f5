//! The re-evaluation policy: which miners are evaluated again after a commit.
//!
//! Owns the configuration value and its serde form (`"all"` or `{ top_k = N, max_carry_rounds = M }`);
//! the decision itself is taken in `plan_commit`. No I/O.

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::ser::{SerializeStruct, Serializer};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::num::NonZeroUsize;

/// Default of `max_carry_rounds`.
pub const DEFAULT_MAX_CARRY_ROUNDS: u64 = 10;

/// Which miners a commit sends back for evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReevaluatePolicy {
    /// Every miner is re-evaluated every round (the reference's behaviour, docs/reference.md#rounds).
    #[default]
    All,
    /// The top `top_k` eligible miners by ranking are re-evaluated next round. The others keep their
    /// committed metrics unchanged and visible (flagged carried over) and are re-evaluated anyway once
    /// their result is `max_carry_rounds` rounds old, or when their image changes.
    TopK {
        /// How many of the best eligible miners are re-evaluated each round (≥ 1).
        top_k: NonZeroUsize,
        /// Most consecutive rounds a result is carried before it is re-evaluated (0: never carried).
        max_carry_rounds: u64,
    },
}

impl Serialize for ReevaluatePolicy {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            ReevaluatePolicy::All => s.serialize_str("all"),
            ReevaluatePolicy::TopK {
                top_k,
                max_carry_rounds,
            } => {
                let mut st = s.serialize_struct("ReevaluatePolicy", 2)?;
                st.serialize_field("top_k", &top_k.get())?;
                st.serialize_field("max_carry_rounds", max_carry_rounds)?;
                st.end()
            }
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TopKTable {
    top_k: usize,
    #[serde(default = "default_max_carry_rounds")]
    max_carry_rounds: u64,
}

fn default_max_carry_rounds() -> u64 {
    DEFAULT_MAX_CARRY_ROUNDS
}

struct PolicyVisitor;

impl<'de> Visitor<'de> for PolicyVisitor {
    type Value = ReevaluatePolicy;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(r#""all" or a table { top_k = N (>= 1), max_carry_rounds = M (default 10) }"#)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<ReevaluatePolicy, E> {
        if v == "all" {
            Ok(ReevaluatePolicy::All)
        } else {
            Err(E::invalid_value(de::Unexpected::Str(v), &self))
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<ReevaluatePolicy, A::Error> {
        // Going through a derived struct gives deny_unknown_fields and good messages for free.
        let t = TopKTable::deserialize(de::value::MapAccessDeserializer::new(map))?;
        let top_k = NonZeroUsize::new(t.top_k)
            .ok_or_else(|| de::Error::invalid_value(de::Unexpected::Unsigned(0), &"top_k >= 1"))?;
        Ok(ReevaluatePolicy::TopK {
            top_k,
            max_carry_rounds: t.max_carry_rounds,
        })
    }
}

impl<'de> Deserialize<'de> for ReevaluatePolicy {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(PolicyVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<ReevaluatePolicy, serde_json::Error> {
        serde_json::from_str(s)
    }

    #[test]
    fn accepts_both_forms_and_defaults_max_carry_rounds() {
        assert_eq!(parse(r#""all""#).unwrap(), ReevaluatePolicy::All);
        assert_eq!(
            parse(r#"{"top_k": 5}"#).unwrap(),
            ReevaluatePolicy::TopK {
                top_k: NonZeroUsize::new(5).unwrap(),
                max_carry_rounds: 10
            }
        );
        assert_eq!(
            parse(r#"{"top_k": 3, "max_carry_rounds": 2}"#).unwrap(),
            ReevaluatePolicy::TopK {
                top_k: NonZeroUsize::new(3).unwrap(),
                max_carry_rounds: 2
            }
        );
        assert_eq!(ReevaluatePolicy::default(), ReevaluatePolicy::All);
    }

    #[test]
    fn refuses_zero_unknown_fields_and_other_names() {
        let zero = parse(r#"{"top_k": 0}"#).unwrap_err().to_string();
        assert!(zero.contains("top_k >= 1"), "{zero}");
        let unknown = parse(r#"{"top_k": 2, "topk": 3}"#).unwrap_err().to_string();
        assert!(unknown.contains("unknown field"), "{unknown}");
        assert!(parse(r#""top_k""#).is_err());
        assert!(parse(r#"{"max_carry_rounds": 2}"#).is_err());
        assert!(parse("5").is_err());
    }

    #[test]
    fn reads_the_toml_config_forms() {
        #[derive(Deserialize)]
        struct Cfg {
            reevaluate: ReevaluatePolicy,
        }
        let all: Cfg = toml::from_str(r#"reevaluate = "all""#).unwrap();
        assert_eq!(all.reevaluate, ReevaluatePolicy::All);
        let top: Cfg = toml::from_str("reevaluate = { top_k = 4 }").unwrap();
        assert_eq!(
            top.reevaluate,
            ReevaluatePolicy::TopK {
                top_k: NonZeroUsize::new(4).unwrap(),
                max_carry_rounds: DEFAULT_MAX_CARRY_ROUNDS
            }
        );
        let table: Cfg = toml::from_str("[reevaluate]\ntop_k = 2\nmax_carry_rounds = 3\n").unwrap();
        assert_eq!(
            table.reevaluate,
            ReevaluatePolicy::TopK {
                top_k: NonZeroUsize::new(2).unwrap(),
                max_carry_rounds: 3
            }
        );
        assert!(toml::from_str::<Cfg>("reevaluate = { top_k = -1 }").is_err());
        assert!(toml::from_str::<Cfg>("reevaluate = { top_k = 2, extra = 1 }").is_err());
    }

    #[test]
    fn roundtrips() {
        for p in [
            ReevaluatePolicy::All,
            ReevaluatePolicy::TopK {
                top_k: NonZeroUsize::new(7).unwrap(),
                max_carry_rounds: 0,
            },
        ] {
            let s = serde_json::to_string(&p).unwrap();
            assert_eq!(parse(&s).unwrap(), p);
        }
    }
}
