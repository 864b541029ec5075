//! The request conditions of a command (`only:` and `skip:`, under `defaults` or
//! `commands.<command>`): plain data; `crate::gate` compiles them into rules per command.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A content type or an inclusive range of them: `101`, or `"110-114"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContentTypes {
    /// The first.
    pub from: i64,
    /// The last (equal to `from` for one type).
    pub to: i64,
}

impl ContentTypes {
    /// Whether `t` is one of them.
    pub fn contains(&self, t: i64) -> bool {
        (self.from..=self.to).contains(&t)
    }
}

impl Serialize for ContentTypes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.from == self.to {
            s.serialize_i64(self.from)
        } else {
            s.serialize_str(&format!("{}-{}", self.from, self.to))
        }
    }
}

impl<'de> Deserialize<'de> for ContentTypes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            One(i64),
            Text(String),
        }
        let bad = || {
            serde::de::Error::custom(
                "expected a content type such as 101 or an inclusive range such as \"110-114\"",
            )
        };
        match Raw::deserialize(d)? {
            Raw::One(n) => Ok(Self { from: n, to: n }),
            Raw::Text(t) => {
                let (a, b) = match t.split_once('-') {
                    Some((a, b)) => (a.trim(), b.trim()),
                    None => (t.trim(), t.trim()),
                };
                let (from, to) = (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
                if from > to {
                    return Err(bad());
                }
                Ok(Self { from, to })
            }
        }
    }
}

/// `only:`: forward only when every listed condition holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OnlyConfig {
    /// The message's `contentType` is one of these.
    pub content_types: Vec<ContentTypes>,
    /// The message is for a bot: its `recvID` is one of `bots`, or `atUserList` names one.
    pub to_bots: bool,
    /// With `to_bots`: an @-everyone (`AtAllTag` in `atUserList`) counts too.
    pub at_all: bool,
}

/// `skip:`: never forward when any listed condition holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SkipConfig {
    /// Content types 1000–5000: OpenIM's notifications (read receipts, 2200, included).
    pub notifications: bool,
    /// The sender (`sendID`) is one of `bots`: the loop guard.
    pub from_bots: bool,
    /// These senders (exact, or patterns with `*`).
    pub send_ids: Vec<String>,
    /// These receivers (`recvID`).
    pub recv_ids: Vec<String>,
    /// These groups (`groupID`).
    pub group_ids: Vec<String>,
    /// These content types.
    pub content_types: Vec<ContentTypes>,
}

impl OnlyConfig {
    /// The request fields each set condition reads: (the key, the JSON names).
    pub fn reads(&self) -> Vec<(&'static str, &'static [&'static str])> {
        let mut out = Vec::new();
        if !self.content_types.is_empty() {
            out.push(("content_types", &["contentType"][..]));
        }
        if self.to_bots {
            out.push(("to_bots", &["recvID", "atUserList"][..]));
        }
        out
    }
}

impl SkipConfig {
    /// The request fields each set condition reads: (the key, the JSON names).
    pub fn reads(&self) -> Vec<(&'static str, &'static [&'static str])> {
        let mut out = Vec::new();
        if self.notifications {
            out.push(("notifications", &["contentType"][..]));
        }
        if self.from_bots {
            out.push(("from_bots", &["sendID"][..]));
        }
        if !self.send_ids.is_empty() {
            out.push(("send_ids", &["sendID"][..]));
        }
        if !self.recv_ids.is_empty() {
            out.push(("recv_ids", &["recvID"][..]));
        }
        if !self.group_ids.is_empty() {
            out.push(("group_ids", &["groupID"][..]));
        }
        if !self.content_types.is_empty() {
            out.push(("content_types", &["contentType"][..]));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types_are_numbers_or_inclusive_ranges() {
        let v: Vec<ContentTypes> =
            serde_json::from_str(r#"[101, "110-114", "106"]"#).expect("parses");
        assert!(v[0].contains(101) && !v[0].contains(102));
        assert!(v[1].contains(110) && v[1].contains(114) && !v[1].contains(115));
        assert!(v[2].contains(106));
        assert_eq!(
            serde_json::to_string(&v).expect("json"),
            r#"[101,"110-114",106]"#
        );
        for bad in [r#""114-110""#, r#""a-b""#, "true"] {
            assert!(serde_json::from_str::<ContentTypes>(bad).is_err(), "{bad}");
        }
    }
}
