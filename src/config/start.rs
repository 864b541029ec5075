//! Start-only settings as a type. A key declared as [`Start<T>`] takes effect when the gateway
//! starts (listeners, the spool, TLS, logging, connection limits) and never on a reload: a
//! reload that changes one is refused, naming the key (`crate::reload`). Which keys those are
//! is read from the types through [`live_view`], not from a list to keep in step, so a new
//! start-only key cannot be forgotten: declaring it `Start<T>` is all it takes.
//!
//! In the file a `Start<T>` reads and writes as its `T`; in code it dereferences to it.

use serde::{Deserialize, Serialize, Serializer};
use std::cell::Cell;

/// A setting read once, at start-up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Start<T>(T);

impl<T> std::ops::Deref for Start<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T> std::ops::DerefMut for Start<T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.0
    }
}

impl<T: std::fmt::Display> std::fmt::Display for Start<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl<T> From<T> for Start<T> {
    fn from(value: T) -> Self {
        Self(value)
    }
}

thread_local! {
    /// On while [`live_view`] serialises: start-only values are written as `null`.
    static MASK: Cell<bool> = const { Cell::new(false) };
}

impl<T: Serialize> Serialize for Start<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if MASK.with(Cell::get) {
            s.serialize_unit()
        } else {
            self.0.serialize(s)
        }
    }
}

/// `value` as JSON with every [`Start`] value written as `null`: the part a reload can apply.
pub fn live_view<T: Serialize>(value: &T) -> serde_json::Value {
    struct Unmask;
    impl Drop for Unmask {
        fn drop(&mut self) {
            MASK.with(|m| m.set(false));
        }
    }
    MASK.with(|m| m.set(true));
    let _unmask = Unmask;
    serde_json::to_value(value).unwrap_or_default()
}

/// Walks two JSON trees side by side and calls `at(keys, a, b)` at each place where they
/// differ: the top, and each key (the union of both sides' keys, in order; a missing one is
/// null) of two differing objects that `at` asked to look into by returning true. `keys` is the
/// path from the top. What a reload changes (`crate::reload::changed_keys`) and which of it is
/// start-only ([`start_only_changes`]) are both this walk.
pub fn walk_differences<'v>(
    a: &'v serde_json::Value,
    b: &'v serde_json::Value,
    at: &mut dyn FnMut(&[&'v str], &serde_json::Value, &serde_json::Value) -> bool,
) {
    use serde_json::Value;
    static NULL: Value = Value::Null;
    fn walk<'v>(
        keys: &mut Vec<&'v str>,
        a: &'v Value,
        b: &'v Value,
        at: &mut dyn FnMut(&[&'v str], &Value, &Value) -> bool,
    ) {
        if a == b || !at(keys, a, b) {
            return;
        }
        if let (Value::Object(x), Value::Object(y)) = (a, b) {
            let names: std::collections::BTreeSet<&'v str> =
                x.keys().chain(y.keys()).map(String::as_str).collect();
            for name in names {
                keys.push(name);
                walk(
                    keys,
                    x.get(name).unwrap_or(&NULL),
                    y.get(name).unwrap_or(&NULL),
                    at,
                );
                keys.pop();
            }
        }
    }
    walk(&mut Vec::new(), a, b, at);
}

/// The start-only keys (dotted paths to each [`Start`] value) whose values differ between `a`
/// and `b`.
pub fn start_only_changes<T: Serialize>(a: &T, b: &T) -> Vec<String> {
    use serde_json::Value;
    let full = (
        serde_json::to_value(a).unwrap_or_default(),
        serde_json::to_value(b).unwrap_or_default(),
    );
    let live = (live_view(a), live_view(b));
    let masked = |live: &Value, keys: &[&str]| {
        keys.iter()
            .try_fold(live, |v, k| v.get(k))
            .is_none_or(Value::is_null)
    };
    let mut out = Vec::new();
    walk_differences(&full.0, &full.1, &mut |keys, _, _| {
        // Masked on both sides while the values differ: a start-only key.
        if masked(&live.0, keys) && masked(&live.1, keys) {
            out.push(keys.join("."));
            return false;
        }
        true
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, Default, Serialize, Deserialize)]
    struct Limits {
        idle: Start<u32>,
        in_flight: u32,
        cap: Option<u32>,
    }

    #[derive(Debug, Clone, Default, Serialize, Deserialize)]
    struct Settings {
        listen: Start<String>,
        admin: Start<Option<String>>,
        timeout: u32,
        limits: Limits,
    }

    #[test]
    fn a_start_value_reads_as_its_own_and_its_changes_are_found_by_type() {
        let a: Settings = serde_json::from_str(
            r#"{"listen": "a:1", "admin": null, "timeout": 1, "limits": {"idle": 5, "in_flight": 9, "cap": null}}"#,
        )
        .expect("parses as plain values");
        assert_eq!(*a.listen, "a:1");
        assert_eq!(
            serde_json::to_value(&a).expect("json")["limits"]["idle"],
            5,
            "written as its value"
        );
        let mut b = a.clone();
        b.timeout = 2;
        b.limits.in_flight = 10;
        b.limits.cap = Some(3);
        assert!(start_only_changes(&a, &b).is_empty(), "live keys only");
        *b.listen = "b:2".into();
        *b.admin = Some("c:3".into());
        *b.limits.idle = 6;
        assert_eq!(
            start_only_changes(&a, &b),
            vec!["admin", "limits.idle", "listen"]
        );
        assert_eq!(
            serde_json::to_value(&a).expect("json")["listen"],
            "a:1",
            "the mask is off again"
        );
    }
}
