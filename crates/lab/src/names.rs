//! Lab names and the namespace names derived from them.
//!
//! Every namespace carries the lab name (`tdm-NAME-...`), because a fixed
//! name once collided with another test's live namespaces and its cleanup
//! deleted them. Interface names never carry it: they live inside the lab's
//! own namespaces, so `eth0`, `br0`, `n1` cannot collide and stay well under
//! the kernel's 15-character limit whatever the lab is called.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::LabError;

/// Prefix of every namespace a lab creates.
pub const NETNS_PREFIX: &str = "tdm-";

/// Longest lab name accepted.
pub const MAX_NAME_LEN: usize = 24;

/// Checks a lab name: 1 to [`MAX_NAME_LEN`] characters from `[a-z0-9-]`,
/// starting and ending with a letter or digit (it becomes part of namespace
/// names and of the state file name, so nothing that needs quoting).
pub fn validate_name(name: &str) -> Result<(), LabError> {
    let invalid = |reason| {
        Err(LabError::InvalidName {
            name: name.to_string(),
            reason,
        })
    };
    if name.is_empty() {
        return invalid("it is empty");
    }
    if name.len() > MAX_NAME_LEN {
        return invalid("it is longer than 24 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return invalid("only lowercase letters, digits and '-' are allowed");
    }
    if name.starts_with('-') || name.ends_with('-') {
        return invalid("it must start and end with a letter or a digit");
    }
    Ok(())
}

/// A fresh lab name, unique among labs of live processes: `l<pid>x<n><t>`,
/// where `n` counts names made by this process (tests run many labs in one
/// process) and `t` is a few base-36 digits of the clock (a pid can be
/// reused after a crash left a state file behind).
pub fn generate_name() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos() ^ d.as_secs() as u32)
        .unwrap_or(0);
    let mut t = String::new();
    let mut v = nanos % (36 * 36 * 36);
    for _ in 0..3 {
        t.push(char::from_digit(v % 36, 36).unwrap_or('0'));
        v /= 36;
    }
    format!("l{}x{}{}", std::process::id(), n, t)
}

/// The namespace holding the lab's bridge.
pub fn bridge_netns_name(lab: &str) -> String {
    format!("{NETNS_PREFIX}{lab}-br")
}

/// The client's namespace.
pub fn client_netns_name(lab: &str) -> String {
    format!("{NETNS_PREFIX}{lab}-c")
}

/// Node `id`'s namespace (ids start at 1).
pub fn node_netns_name(lab: &str, id: u32) -> String {
    format!("{NETNS_PREFIX}{lab}-n{id}")
}

/// The bridge-side veth of node `id` (inside the bridge namespace).
pub(crate) fn node_bridge_port(id: u32) -> String {
    format!("n{id}")
}

/// The bridge-side veth of the client (inside the bridge namespace).
pub(crate) const CLIENT_BRIDGE_PORT: &str = "c";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_names_pass() {
        for name in [
            "a",
            "tandem",
            "t-1",
            "faults-12345",
            "abcdefghijklmnopqrstuvwx",
        ] {
            validate_name(name).unwrap();
        }
    }

    #[test]
    fn bad_names_fail_with_a_reason() {
        for name in [
            "",
            "-a",
            "a-",
            "A",
            "a_b",
            "a.b",
            "a/b",
            "a b",
            "é",
            "abcdefghijklmnopqrstuvwxy",
        ] {
            let err = validate_name(name).unwrap_err();
            assert!(matches!(err, LabError::InvalidName { .. }), "{name:?}");
            assert!(err.to_string().contains("invalid lab name"));
        }
    }

    #[test]
    fn generated_names_are_valid_and_distinct() {
        let a = generate_name();
        let b = generate_name();
        validate_name(&a).unwrap();
        validate_name(&b).unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn namespace_names_of_different_labs_never_collide() {
        // Suffixes differ by kind (-br, -c, -nI), so equal names imply the
        // same lab name and the same role.
        let labs = ["a", "a-n1", "a-c", "a-br", "n1", "c"];
        let mut all = std::collections::BTreeSet::new();
        for lab in labs {
            assert!(all.insert(bridge_netns_name(lab)));
            assert!(all.insert(client_netns_name(lab)));
            for id in 1..=9 {
                assert!(all.insert(node_netns_name(lab, id)));
            }
        }
    }
}
