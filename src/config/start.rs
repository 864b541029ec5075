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

/// The start-only keys (dotted paths to each [`Start`] value) whose values differ between `a`
/// and `b`.
pub fn start_only_changes<T: Serialize>(a: &T, b: &T) -> Vec<String> {
    use serde_json::Value;
    fn walk(
        path: &str,
        (full_a, full_b): (&Value, &Value),
        (live_a, live_b): (&Value, &Value),
        out: &mut Vec<String>,
    ) {
        if full_a == full_b {
            return;
        }
        // Masked on both sides while the values differ: a start-only key.
        if live_a.is_null() && live_b.is_null() {
            out.push(path.to_owned());
            return;
        }
        if let (Value::Object(fa), Value::Object(fb)) = (full_a, full_b) {
            let null = Value::Null;
            let keys: std::collections::BTreeSet<&String> = fa.keys().chain(fb.keys()).collect();
            for k in keys {
                let path = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                let at = |v: &'_ Value| v.get(k.as_str()).cloned().unwrap_or(Value::Null);
                walk(
                    &path,
                    (fa.get(k).unwrap_or(&null), fb.get(k).unwrap_or(&null)),
                    (&at(live_a), &at(live_b)),
                    out,
                );
            }
        }
    }
    let full = (
        serde_json::to_value(a).unwrap_or_default(),
        serde_json::to_value(b).unwrap_or_default(),
    );
    let live = (live_view(a), live_view(b));
    let mut out = Vec::new();
    walk("", (&full.0, &full.1), (&live.0, &live.1), &mut out);
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
