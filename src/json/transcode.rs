//! One pass from an OpenIM body to the request's protobuf bytes: the hot path of every callback.
//!
//! [`super::decode`] builds a `serde_json::Value` tree, then a `DynamicMessage`, which the pipeline
//! then encodes: three representations of the body and an allocation per key and value. A
//! [`Transcoder`] is compiled once per request type from the descriptors (field numbers, kinds,
//! JSON names sorted for a binary search) and streams the body through `serde_json`'s tokenizer
//! straight into protobuf bytes: no tree, no `DynamicMessage`, no per-field descriptor lookups.
//!
//! It follows exactly the rules of [`super::decode`] for what it accepts (exact key then a
//! case-insensitive one, `null` as absent, `{"value": x}` wrappers, integers as strings, unknown
//! keys collected with their paths). Whatever it does not handle the same way in one pass gives up
//! with [`None`], and the caller runs [`super::decode`], which stays the reference and the one
//! place that explains what is wrong: any type or range error, a field given twice (the tree keeps
//! the last value; a protobuf stream would merge them), a wrapped `null` inside a list, a body
//! that is not one JSON object. So the fast path never changes an answer, only its cost; the
//! tests check that on every real payload and on variants of each.

use super::Path;
use super::plan::{FieldPlan, Kind, Plan, Shape};
use base64::Engine as _;
use prost_reflect::MessageDescriptor;
use serde::de::{self, DeserializeSeed, Error as _, MapAccess, SeqAccess, Visitor};
use std::collections::HashSet;
use std::fmt;

/// A body transcoded to the request message's protobuf encoding.
#[derive(Debug)]
pub struct Transcoded {
    /// The request message, encoded (fields in body order; the same message as
    /// `decode(..).message.encode_to_vec()` once decoded).
    pub payload: Vec<u8>,
    /// Keys the descriptor does not know, as paths (`memberList[].nick`), as [`super::decode`]
    /// reports them.
    pub unknown_keys: Vec<String>,
}

/// The request type's fields, compiled once from its descriptor.
#[derive(Debug, Clone)]
pub struct Transcoder {
    plan: Plan,
}

impl Transcoder {
    /// Compiles the transcoder of a request type.
    pub fn new(desc: &MessageDescriptor) -> Self {
        Self {
            plan: Plan::new(desc),
        }
    }

    /// Transcodes one body, or `None` when [`super::decode`] must handle it (see the module
    /// documentation).
    pub fn transcode(&self, body: &[u8]) -> Option<Transcoded> {
        let mut out = Out {
            buf: Vec::with_capacity(body.len()),
            unknown: Vec::new(),
        };
        let mut de = serde_json::Deserializer::from_slice(body);
        MessageSeed {
            t: self,
            msg: 0,
            out: &mut out,
            path: &Path::Root,
        }
        .deserialize(&mut de)
        .ok()?;
        de.end().ok()?;
        Some(Transcoded {
            payload: out.buf,
            unknown_keys: out.unknown,
        })
    }

    fn field(&self, msg: usize, key: &str) -> Option<&FieldPlan> {
        let plan = &self.plan.messages[msg];
        match plan.by_name.binary_search_by(|(name, _)| (**name).cmp(key)) {
            Ok(i) => Some(&plan.fields[plan.by_name[i].1]),
            Err(_) => plan
                .fields
                .iter()
                .find(|f| f.json_name.eq_ignore_ascii_case(key)),
        }
    }
}

/// The output: protobuf bytes and the unknown keys met on the way.
struct Out {
    buf: Vec<u8>,
    unknown: Vec<String>,
}

fn put_varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

fn put_tag(buf: &mut Vec<u8>, number: u32, wire: u32) {
    put_varint(buf, (u64::from(number) << 3) | u64::from(wire));
}

/// Reserves one byte for a length; returns where the content starts.
fn begin_len(buf: &mut Vec<u8>) -> usize {
    buf.push(0);
    buf.len()
}

/// Writes the length of what follows `start` in front of it (usually in the one reserved byte).
fn end_len(buf: &mut Vec<u8>, start: usize) {
    let len = buf.len() - start;
    if len < 0x80 {
        buf[start - 1] = len as u8;
    } else {
        let mut prefix = Vec::with_capacity(10);
        put_varint(&mut prefix, len as u64);
        buf.splice(start - 1..start, prefix);
    }
}

/// A message: a JSON object.
struct MessageSeed<'a, 'p> {
    t: &'a Transcoder,
    msg: usize,
    out: &'a mut Out,
    path: &'p Path<'p>,
}

impl<'de> DeserializeSeed<'de> for MessageSeed<'_, '_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for MessageSeed<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen = Seen::default();
        // A set: a body can carry tens of thousands of unknown keys.
        let mut unknown_here: HashSet<String> = HashSet::new();
        while let Some(key) = map.next_key_seed(KeySeed)? {
            let key: &str = &key;
            let path = Path::Key(self.path, key);
            let Some(field) = self.t.field(self.msg, key) else {
                // The tree holds a key given twice once.
                if !unknown_here.insert(key.to_owned()) {
                    return Err(A::Error::custom("an unknown key given twice"));
                }
                // Without list indexes, as `decode` counts them: per key, not per element.
                self.out.unknown.push(path.render(false));
                // Read as the tree reads it: `IgnoredAny` would skip invalid escapes and
                // nesting past the recursion limit that the tree decoder refuses.
                map.next_value::<serde_json::Value>()?;
                continue;
            };
            if !seen.insert(field.number) {
                return Err(A::Error::custom("a field given twice"));
            }
            map.next_value_seed(FieldSeed {
                t: self.t,
                field,
                out: &mut *self.out,
                path: &path,
            })?;
        }
        Ok(())
    }
}

/// Field numbers met in one object.
#[derive(Default)]
struct Seen {
    low: u128,
    high: Vec<u32>,
}

impl Seen {
    /// False when `number` was met before.
    fn insert(&mut self, number: u32) -> bool {
        if number < 128 {
            let bit = 1u128 << number;
            let new = self.low & bit == 0;
            self.low |= bit;
            new
        } else if self.high.contains(&number) {
            false
        } else {
            self.high.push(number);
            true
        }
    }
}

/// A key: borrowed from the body unless it has escapes.
struct KeySeed;

enum Key<'de> {
    Borrowed(&'de str),
    Owned(String),
}

impl std::ops::Deref for Key<'_> {
    type Target = str;
    fn deref(&self) -> &str {
        match self {
            Key::Borrowed(s) => s,
            Key::Owned(s) => s,
        }
    }
}

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Key<'de>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Key<'de>, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed {
    type Value = Key<'de>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a key")
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
        Ok(Key::Borrowed(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Key<'de>, E> {
        Ok(Key::Owned(v.to_owned()))
    }
}

/// One field's value, by its shape.
struct FieldSeed<'a, 'p> {
    t: &'a Transcoder,
    field: &'a FieldPlan,
    out: &'a mut Out,
    path: &'p Path<'p>,
}

impl<'de> DeserializeSeed<'de> for FieldSeed<'_, '_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        let number = self.field.number;
        match self.field.shape {
            Shape::Single {
                kind: Kind::Message(msg),
                ..
            } => d.deserialize_any(NestedSeed {
                t: self.t,
                msg,
                tag: Some(number),
                out: self.out,
                path: self.path,
                null: Null::Absent,
            }),
            Shape::Single { kind, presence } => {
                d.deserialize_any(ScalarSeed {
                    t: self.t,
                    kind,
                    tag: Some(number),
                    skip_default: !presence,
                    buf: &mut self.out.buf,
                    wrapped: false,
                    null: Null::Absent,
                })?;
                Ok(())
            }
            Shape::List { kind, packed } => d.deserialize_any(ListSeed {
                t: self.t,
                number,
                kind,
                packed: packed && kind.wire() != 2,
                out: self.out,
                path: self.path,
            }),
            Shape::Map { key, value } => d.deserialize_any(MapSeed {
                t: self.t,
                number,
                key,
                value,
                out: self.out,
                path: self.path,
            }),
        }
    }
}

/// What a `null` stands for where it appears.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Null {
    /// A field: absent, nothing written.
    Absent,
    /// A list element: kept in its place with the default value (a nil pointer in a Go slice).
    Default,
}

/// A message value (a field, a list element or a map value), with its tag and length when
/// `tag` is set, else its length only (map values write their own tag first).
struct NestedSeed<'a, 'p> {
    t: &'a Transcoder,
    msg: usize,
    tag: Option<u32>,
    out: &'a mut Out,
    path: &'p Path<'p>,
    null: Null,
}

impl<'de> DeserializeSeed<'de> for NestedSeed<'_, '_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for NestedSeed<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object")
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        if self.null == Null::Default {
            if let Some(n) = self.tag {
                put_tag(&mut self.out.buf, n, 2);
            }
            self.out.buf.push(0);
        }
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        if let Some(n) = self.tag {
            put_tag(&mut self.out.buf, n, 2);
        }
        let start = begin_len(&mut self.out.buf);
        MessageSeed {
            t: self.t,
            msg: self.msg,
            out: &mut *self.out,
            path: self.path,
        }
        .visit_map(map)?;
        end_len(&mut self.out.buf, start);
        Ok(())
    }
}

/// A repeated field: a JSON array.
struct ListSeed<'a, 'p> {
    t: &'a Transcoder,
    number: u32,
    kind: Kind,
    packed: bool,
    out: &'a mut Out,
    path: &'p Path<'p>,
}

impl<'de> Visitor<'de> for ListSeed<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array")
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mark = self.out.buf.len();
        let mut start = 0;
        if self.packed {
            put_tag(&mut self.out.buf, self.number, 2);
            start = begin_len(&mut self.out.buf);
        }
        let mut i = 0;
        loop {
            let path = Path::Index(self.path, i);
            let more = if let Kind::Message(msg) = self.kind {
                seq.next_element_seed(NestedSeed {
                    t: self.t,
                    msg,
                    tag: Some(self.number),
                    out: &mut *self.out,
                    path: &path,
                    null: Null::Default,
                })?
                .is_some()
            } else {
                match seq.next_element_seed(ScalarSeed {
                    t: self.t,
                    kind: self.kind,
                    tag: (!self.packed).then_some(self.number),
                    skip_default: false,
                    buf: &mut self.out.buf,
                    wrapped: false,
                    null: Null::Default,
                })? {
                    None => false,
                    // `decode` drops a `{"value": null}` element instead of keeping its place.
                    Some(Wrote::WrappedNull) => {
                        return Err(A::Error::custom("a wrapped null in a list"));
                    }
                    Some(_) => true,
                }
            };
            if !more {
                break;
            }
            i += 1;
        }
        if self.packed {
            if i == 0 {
                self.out.buf.truncate(mark);
            } else {
                end_len(&mut self.out.buf, start);
            }
        }
        Ok(())
    }
}

/// A map field: a JSON object of entries.
struct MapSeed<'a, 'p> {
    t: &'a Transcoder,
    number: u32,
    key: Kind,
    value: Kind,
    out: &'a mut Out,
    path: &'p Path<'p>,
}

impl<'de> Visitor<'de> for MapSeed<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object")
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key_seed(KeySeed)? {
            let key: &str = &key;
            let path = Path::Key(self.path, key);
            let mark = self.out.buf.len();
            put_tag(&mut self.out.buf, self.number, 2);
            let start = begin_len(&mut self.out.buf);
            map_key(self.key, key, &mut self.out.buf).map_err(A::Error::custom)?;
            let before_value = self.out.buf.len();
            if let Kind::Message(msg) = self.value {
                put_tag(&mut self.out.buf, 2, 2);
                map.next_value_seed(NestedSeed {
                    t: self.t,
                    msg,
                    tag: None,
                    out: &mut *self.out,
                    path: &path,
                    null: Null::Absent,
                })?;
                if self.out.buf.len() == before_value + 1 {
                    // `null`: `decode` skips the entry.
                    self.out.buf.truncate(mark);
                    continue;
                }
            } else {
                let wrote = map.next_value_seed(ScalarSeed {
                    t: self.t,
                    kind: self.value,
                    tag: Some(2),
                    skip_default: false,
                    buf: &mut self.out.buf,
                    wrapped: false,
                    null: Null::Absent,
                })?;
                if wrote != Wrote::Value {
                    self.out.buf.truncate(mark);
                    continue;
                }
            }
            end_len(&mut self.out.buf, start);
        }
        Ok(())
    }
}

macro_rules! any_seed {
    ($($name:ident),*) => {$(
        impl<'de> DeserializeSeed<'de> for $name<'_, '_> {
            type Value = ();
            fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
                d.deserialize_any(self)
            }
        }
    )*};
}
any_seed!(ListSeed, MapSeed);

/// A map key (a JSON object key): field 1 of the entry.
fn map_key(kind: Kind, key: &str, buf: &mut Vec<u8>) -> Result<(), String> {
    let value = match kind {
        Kind::String => Scalar::Str(key),
        Kind::Bool => match key {
            "true" => Scalar::Int(1),
            "false" => Scalar::Int(0),
            _ => return Err("map key is not a boolean".into()),
        },
        _ => int_from_str(key, kind)?,
    };
    write(kind, Some(1), false, value, buf)
}

/// What a scalar seed wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wrote {
    /// A value (or a default left out).
    Value,
    /// `null`: nothing, or the default for a list element.
    Null,
    /// `{"value": null}`: nothing.
    WrappedNull,
}

/// A scalar value (a field, a list element or a map value), written with its tag when `tag` is
/// set.
struct ScalarSeed<'a> {
    t: &'a Transcoder,
    kind: Kind,
    tag: Option<u32>,
    /// Leave out the default value (a proto3 field without presence).
    skip_default: bool,
    buf: &'a mut Vec<u8>,
    /// Inside `{"value": …}`: no second wrapper.
    wrapped: bool,
    null: Null,
}

/// A scalar as read, before it is checked against the field's kind.
enum Scalar<'s> {
    Int(i128),
    Float(f64),
    Str(&'s str),
    Bytes(Vec<u8>),
}

impl ScalarSeed<'_> {
    fn put<E: de::Error>(self, value: Result<Scalar<'_>, String>) -> Result<Wrote, E> {
        let value = value.map_err(E::custom)?;
        write(self.kind, self.tag, self.skip_default, value, self.buf).map_err(E::custom)?;
        Ok(Wrote::Value)
    }
}

impl<'de> DeserializeSeed<'de> for ScalarSeed<'_> {
    type Value = Wrote;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Wrote, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ScalarSeed<'_> {
    type Value = Wrote;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a scalar")
    }
    fn visit_unit<E: de::Error>(self) -> Result<Wrote, E> {
        if self.wrapped {
            return Ok(Wrote::WrappedNull);
        }
        if self.null == Null::Default {
            let default = match self.kind {
                Kind::Double | Kind::Float => Scalar::Float(0.0),
                Kind::String => Scalar::Str(""),
                Kind::Bytes => Scalar::Bytes(Vec::new()),
                _ => Scalar::Int(0),
            };
            self.put::<E>(Ok(default))?;
        }
        Ok(Wrote::Null)
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Wrote, E> {
        let value = match self.kind {
            Kind::Bool => Ok(Scalar::Int(i128::from(v))),
            _ => Err("a boolean".into()),
        };
        self.put(value)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Wrote, E> {
        let value = number(self.kind, i128::from(v), v as f64);
        self.put(value)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Wrote, E> {
        let value = number(self.kind, i128::from(v), v as f64);
        self.put(value)
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Wrote, E> {
        let value = match self.kind {
            Kind::Double | Kind::Float => Ok(Scalar::Float(v)),
            k if !k.integral() => Err("a number".into()),
            _ if v.fract() == 0.0 && v.abs() < 1e38 => Ok(Scalar::Int(v as i128)),
            _ => Err("not an integer".into()),
        };
        self.put(value)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Wrote, E> {
        let value = match self.kind {
            Kind::String => Ok(Scalar::Str(v)),
            Kind::Bytes => base64::engine::general_purpose::STANDARD
                .decode(v)
                .map(Scalar::Bytes)
                .map_err(|e| e.to_string()),
            Kind::Double | Kind::Float => v
                .trim()
                .parse::<f64>()
                .map(Scalar::Float)
                .map_err(|e| e.to_string()),
            Kind::Enum(e) => self.t.plan.enums[e]
                .get_value_by_name(v)
                .map(|value| Scalar::Int(i128::from(value.number())))
                .ok_or_else(|| "not an enum value".to_owned()),
            Kind::Bool | Kind::Message(_) => Err("a string".into()),
            int => int_from_str(v, int),
        };
        self.put(value)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Wrote, A::Error> {
        // `{"value": x}`, the wrapper of OpenIM's docs: exactly that one key.
        if self.wrapped {
            return Err(A::Error::custom("a wrapper inside a wrapper"));
        }
        match map.next_key_seed(KeySeed)? {
            Some(k) if &*k == "value" => {}
            _ => return Err(A::Error::custom("an object")),
        }
        let wrote = map.next_value_seed(ScalarSeed {
            wrapped: true,
            ..self
        })?;
        if map.next_key_seed(KeySeed)?.is_some() {
            return Err(A::Error::custom("an object with more than `value`"));
        }
        Ok(wrote)
    }
}

/// A JSON number for a field of `kind` (`f`: the same number as a float).
fn number(kind: Kind, i: i128, f: f64) -> Result<Scalar<'static>, String> {
    match kind {
        Kind::Double | Kind::Float => Ok(Scalar::Float(f)),
        k if k.integral() => Ok(Scalar::Int(i)),
        _ => Err("a number".into()),
    }
}

/// An integer held in a string (`decode` trims it).
fn int_from_str(s: &str, kind: Kind) -> Result<Scalar<'static>, String> {
    if !kind.integral() {
        return Err("not an integer kind".into());
    }
    s.trim()
        .parse::<i128>()
        .map(Scalar::Int)
        .map_err(|e| e.to_string())
}

/// Checks `value` against `kind` (ranges as `decode` checks them) and writes it, with its tag
/// when `tag` is set, unless it is the default and `skip_default`.
fn write(
    kind: Kind,
    tag: Option<u32>,
    skip_default: bool,
    value: Scalar<'_>,
    buf: &mut Vec<u8>,
) -> Result<(), String> {
    let range = |i: i128, min: i128, max: i128| {
        if (min..=max).contains(&i) {
            Ok(i)
        } else {
            Err(format!("{i} is out of range"))
        }
    };
    let tag = |buf: &mut Vec<u8>| {
        if let Some(n) = tag {
            put_tag(buf, n, kind.wire());
        }
    };
    match (kind, value) {
        (Kind::String, Scalar::Str(s)) => {
            if !(skip_default && s.is_empty()) {
                tag(buf);
                put_varint(buf, s.len() as u64);
                buf.extend_from_slice(s.as_bytes());
            }
        }
        (Kind::Bytes, Scalar::Bytes(b)) => {
            if !(skip_default && b.is_empty()) {
                tag(buf);
                put_varint(buf, b.len() as u64);
                buf.extend_from_slice(&b);
            }
        }
        (Kind::Double, Scalar::Float(f)) => {
            if !(skip_default && f == 0.0) {
                tag(buf);
                buf.extend_from_slice(&f.to_le_bytes());
            }
        }
        (Kind::Float, Scalar::Float(f)) => {
            let f = f as f32;
            if !(skip_default && f == 0.0) {
                tag(buf);
                buf.extend_from_slice(&f.to_le_bytes());
            }
        }
        (kind, Scalar::Int(i)) => {
            let i = match kind {
                Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 | Kind::Enum(_) => {
                    range(i, i32::MIN.into(), i32::MAX.into())?
                }
                Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => {
                    range(i, i64::MIN.into(), i64::MAX.into())?
                }
                Kind::Uint32 | Kind::Fixed32 => range(i, 0, u32::MAX.into())?,
                Kind::Uint64 | Kind::Fixed64 => range(i, 0, u64::MAX.into())?,
                Kind::Bool => i,
                _ => return Err("not an integer field".into()),
            };
            if skip_default && i == 0 {
                return Ok(());
            }
            tag(buf);
            match kind {
                // Sign-extended to 64 bits, as protobuf writes a negative int32.
                Kind::Int32 | Kind::Enum(_) | Kind::Int64 => put_varint(buf, i as i64 as u64),
                Kind::Uint32 | Kind::Uint64 | Kind::Bool => put_varint(buf, i as u64),
                Kind::Sint32 => {
                    let v = i as i32;
                    put_varint(buf, u64::from(((v << 1) ^ (v >> 31)) as u32));
                }
                Kind::Sint64 => {
                    let v = i as i64;
                    put_varint(buf, ((v << 1) ^ (v >> 63)) as u64);
                }
                Kind::Fixed32 => buf.extend_from_slice(&(i as u32).to_le_bytes()),
                Kind::Sfixed32 => buf.extend_from_slice(&(i as i32).to_le_bytes()),
                Kind::Fixed64 => buf.extend_from_slice(&(i as u64).to_le_bytes()),
                Kind::Sfixed64 => buf.extend_from_slice(&(i as i64).to_le_bytes()),
                _ => {}
            }
        }
        _ => return Err("wrong type".into()),
    }
    Ok(())
}

#[cfg(test)]
mod tests;
