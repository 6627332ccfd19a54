//! The parameters that shape a service's replicated state, agreed through
//! the log rather than assumed (docs/architecture.md §3.9).
//!
//! Every replica applies the same entries, but *how* it applies them also
//! depends on settings: the service kind (and a wasm module's bytes), the
//! window clamp and shadow TCP's bounds, the service limits, the SDK's seed,
//! the formats of entries and snapshots. Two nodes that differ in any of
//! them diverge silently on the same log. So each leader proposes its own
//! [`GroupParameters`] as the first entry of its term; the first set a
//! group applies becomes *the group's* (kept in its state and in every
//! snapshot); a later set that differs is ignored by every replica alike.
//! A node whose own parameters differ from the group's stops applying,
//! refuses the leadership and stops with an error that names each
//! parameter and both values ([`Difference`]).
//!
//! Values are strings under names, in a sorted map: a set from a binary
//! with a parameter more (or less) still decodes, and shows as a
//! difference.

use crate::config::ServiceKind;
use crate::services::ServiceOptions;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use tandem_core::sdk::Limits;
use tandem_core::shadow::hash::Fnv64;
use tandem_core::shadow::ShadowConfig;

/// The version of apply's semantics: raise it with any change that makes
/// the same log give a different state or different replies (a new entry
/// item, a service's reply to a command, shadow TCP's rules). Nodes of
/// different versions refuse to run one group together.
pub const STATE_MACHINE_VERSION: u32 = 1;

/// Names whose values are secrets: compared by fingerprint, never shown.
const SECRET: &[&str] = &["requirepass"];

/// One node's parameters, or the group's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupParameters(BTreeMap<String, String>);

/// What a node's group is built from, for [`GroupParameters::of`].
pub struct ParameterSource<'a> {
    pub kind: &'a ServiceKind,
    pub options: &'a ServiceOptions,
    pub shadow: &'a ShadowConfig,
    pub limits: &'a Limits,
    pub seed: u64,
    pub snapshot_format: u32,
}

impl GroupParameters {
    /// The parameters a node with this setup applies the log with.
    pub fn of(source: ParameterSource<'_>) -> GroupParameters {
        let mut p = BTreeMap::new();
        let mut put = |name: &str, value: String| {
            p.insert(name.to_string(), value);
        };
        put("state_machine_version", STATE_MACHINE_VERSION.to_string());
        put("snapshot_format", source.snapshot_format.to_string());
        put("kind", crate::services::kind_name(*source.kind).to_string());
        if let ServiceKind::Wasm(id) = source.kind {
            // The id covers the module's bytes and its wasm_* bounds.
            put("module", tandem_wasm::registry::hex(&id.0));
            if let Some(module) = tandem_wasm::registry::lookup(id) {
                let c = module.config();
                put("wasm_fuel_per_event", c.fuel_per_event.to_string());
                put("wasm_max_memory", c.max_memory.to_string());
                put("wasm_max_stack", c.max_stack.to_string());
            }
        }
        put(
            "seed (from the service's name)",
            format!("{:016x}", source.seed),
        );
        put(
            "requirepass",
            match &source.options.requirepass {
                None => "none".into(),
                Some(pass) => {
                    let mut h = Fnv64::new();
                    h.bytes(b"tandem requirepass\0");
                    h.bytes(pass.as_bytes());
                    format!("{:016x}", h.finish())
                }
            },
        );
        let s = source.shadow;
        put("window_clamp", s.window_clamp.to_string());
        put("out_of_order_limit", s.out_of_order_limit.to_string());
        put("max_connections", s.max_connections.to_string());
        put("max_half_open", s.max_half_open.to_string());
        put("half_open_timeout_ms", s.half_open_timeout_ms.to_string());
        put("time_wait_ms", s.time_wait_ms.to_string());
        put("output_limit", s.output_limit.to_string());
        let l = source.limits;
        put("output_cap", l.output_cap.to_string());
        put("max_memory", l.max_memory.to_string());
        put("max_request", l.max_request.to_string());
        put("max_value", l.max_value.to_string());
        GroupParameters(p)
    }

    /// Where this node (`self`) and the group (`group`) differ, by name.
    pub fn differences(&self, group: &GroupParameters) -> Vec<Difference> {
        let names: std::collections::BTreeSet<&String> =
            self.0.keys().chain(group.0.keys()).collect();
        names
            .into_iter()
            .filter_map(|name| {
                let here = self.0.get(name);
                let there = group.0.get(name);
                (here != there).then(|| Difference {
                    name: name.clone(),
                    here: here.cloned(),
                    group: there.cloned(),
                })
            })
            .collect()
    }

    /// The value of a parameter.
    #[cfg(test)]
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// Named values, sorted by name (for hashing into the state).
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// A copy with one value changed.
    #[cfg(test)]
    pub fn with(mut self, name: &str, value: &str) -> GroupParameters {
        self.0.insert(name.to_string(), value.to_string());
        self
    }
}

/// One parameter on which a node and its group disagree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    pub name: String,
    /// This node's value (`None`: its binary has no such parameter).
    pub here: Option<String>,
    /// The group's.
    pub group: Option<String>,
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |v: &Option<String>| match v {
            None => "nothing (a binary without this parameter)".to_string(),
            Some(v) if SECRET.contains(&self.name.as_str()) => {
                if v == "none" {
                    "none".to_string()
                } else {
                    "one (not shown)".to_string()
                }
            }
            Some(v) => v.clone(),
        };
        if SECRET.contains(&self.name.as_str()) && self.here.is_some() && self.group.is_some() {
            let (here, group) = (show(&self.here), show(&self.group));
            if here == group {
                return write!(f, "{}: this node's differs from the group's", self.name);
            }
            return write!(
                f,
                "{}: this node has {here}, the group has {group}",
                self.name
            );
        }
        write!(
            f,
            "{}: this node has {}, the group has {}",
            self.name,
            show(&self.here),
            show(&self.group)
        )
    }
}

/// The whole refusal, one line per difference, for logs and status.
pub fn describe(differences: &[Difference]) -> String {
    let parts: Vec<String> = differences.iter().map(|d| d.to_string()).collect();
    format!(
        "this node's configuration disagrees with the group's ({}); make it the same on every node \
         (docs/operating.md, \"Parameters every node must share\")",
        parts.join("; ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(window: u32, pass: Option<&str>) -> GroupParameters {
        GroupParameters::of(ParameterSource {
            kind: &ServiceKind::Kv,
            options: &ServiceOptions {
                requirepass: pass.map(str::to_string),
            },
            shadow: &ShadowConfig::new(window),
            limits: &Limits::default(),
            seed: 42,
            snapshot_format: 3,
        })
    }

    #[test]
    fn equal_setups_agree_and_a_difference_names_both_values() {
        assert!(params(262_144, None)
            .differences(&params(262_144, None))
            .is_empty());
        let d = params(131_072, None).differences(&params(262_144, None));
        let names: Vec<&str> = d.iter().map(|d| d.name.as_str()).collect();
        // The clamp and what is derived from it.
        assert_eq!(names, ["out_of_order_limit", "window_clamp"]);
        assert_eq!(
            d[1].to_string(),
            "window_clamp: this node has 131072, the group has 262144"
        );
        assert!(describe(&d).contains("window_clamp: this node has 131072"));
    }

    #[test]
    fn passwords_are_compared_but_never_shown() {
        let d = params(262_144, Some("hunter2")).differences(&params(262_144, Some("s3cret")));
        assert_eq!(d.len(), 1);
        let text = d[0].to_string();
        assert_eq!(text, "requirepass: this node's differs from the group's");
        let d = params(262_144, Some("hunter2")).differences(&params(262_144, None));
        let text = d[0].to_string();
        assert_eq!(
            text,
            "requirepass: this node has one (not shown), the group has none"
        );
        assert!(!format!("{:?}", params(262_144, Some("hunter2"))).contains("hunter2"));
    }

    #[test]
    fn a_parameter_one_binary_lacks_is_a_difference() {
        let mine = params(262_144, None);
        let newer = mine.clone().with("compression", "lz4");
        let d = mine.differences(&newer);
        assert_eq!(d.len(), 1);
        assert_eq!(
            d[0].to_string(),
            "compression: this node has nothing (a binary without this parameter), the group has lz4"
        );
    }

    #[test]
    fn another_wasm_module_is_a_difference() {
        let of = |byte: u8| {
            GroupParameters::of(ParameterSource {
                kind: &ServiceKind::Wasm(tandem_wasm::registry::ModuleId([byte; 32])),
                options: &ServiceOptions::default(),
                shadow: &ShadowConfig::default(),
                limits: &Limits::default(),
                seed: 42,
                snapshot_format: 3,
            })
        };
        assert!(of(1).differences(&of(1)).is_empty());
        let d = of(1).differences(&of(2));
        assert!(d.iter().any(|d| d.name == "module"), "{d:?}");
        assert!(of(1)
            .differences(&params(262_144, None))
            .iter()
            .any(|d| d.name == "kind"));
    }

    #[test]
    fn the_encoding_round_trips() {
        let p = params(262_144, Some("x"));
        let bytes = postcard::to_stdvec(&p).unwrap();
        assert_eq!(postcard::from_bytes::<GroupParameters>(&bytes).unwrap(), p);
    }
}
