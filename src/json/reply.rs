//! One pass from an upstream's reply bytes to the override members of OpenIM's envelope: the hot
//! path of every before-callback's answer, the mirror of the request [`super::Transcoder`].
//!
//! The reference reads the reply into a `DynamicMessage` (`prost_reflect`), applies the command's
//! safety rules on it (`crate::envelope`), encodes it as a `serde_json` map ([`super::encode`]) and
//! serialises the map: a tree per reply and an allocation per key. A [`ReplyWriter`] is compiled
//! once per reply type (from the field plan it shares with the transcoder, `json/plan.rs`) and
//! writes the members straight from the protobuf bytes, in declaration order, with the same keys,
//! number formats and escaping as the map's serialisation; the rules' reads
//! ([`ReplyWriter::has`], [`ReplyWriter::string`], …) and edits ([`Edit`]) work on the bytes too.
//!
//! [`ReplyWriter::takes`] accepts only bytes that `DynamicMessage::decode` reads the same way
//! (it uses prost's own varint, key and length rules): anything it does not handle identically in
//! one pass — a singular message given twice (the tree merges them), a map, a member of a real
//! oneof, a group, nesting deeper than [`MAX_DEPTH`], any malformed byte — is handed back, and the
//! caller takes the tree path, which stays the reference and the one place that explains what is
//! wrong with a reply. The fuzz target `reply` and `tests/it/fuzz_regressions.rs` hold both paths
//! to the same envelope bytes.

use super::plan::{Kind, Plan, Shape};
use base64::Engine as _;
use prost_reflect::MessageDescriptor;
use serde_json::Value as Json;

/// Nesting the one pass follows; deeper replies take the tree path (prost's own limit is 100).
pub const MAX_DEPTH: u32 = 32;

/// A reply type's fields, compiled once from its descriptor.
#[derive(Debug, Clone)]
pub struct ReplyWriter {
    plan: Plan,
    /// Per message of the plan, per field: `"jsonName":`, escaped as `serde_json` writes keys.
    keys: Vec<Vec<Box<[u8]>>>,
}

/// A top-level field of the reply type, by its place in declaration order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplyField(usize);

/// A change a safety rule makes to one top-level field before it is written.
#[derive(Debug, Clone, PartialEq)]
pub enum Edit {
    /// Cleared: as if the service had not set it (a plain scalar is then written as its default).
    Clear,
    /// Set to this value (the request's, already in OpenIM JSON).
    Fill(Json),
    /// A list of messages: only the entries that have this field (by JSON name) set.
    Require(&'static str),
}

/// One field's value on the wire.
#[derive(Clone, Copy)]
enum Raw<'b> {
    Varint(u64),
    Fixed64([u8; 8]),
    Fixed32([u8; 4]),
    Len(&'b [u8]),
}

/// Reads a key as prost's `decode_key` does: `None` where prost fails.
fn key(buf: &mut &[u8]) -> Option<(u32, u32)> {
    let key = prost::encoding::decode_varint(buf).ok()?;
    let key = u32::try_from(key).ok()?;
    let (number, wire) = (key >> 3, key & 7);
    (number >= 1 && wire <= 5).then_some((number, wire))
}

/// Reads one value of wire type `wire` (not a group).
fn raw<'b>(wire: u32, buf: &mut &'b [u8]) -> Option<Raw<'b>> {
    fn take<const N: usize>(buf: &mut &[u8]) -> Option<[u8; N]> {
        let (head, rest) = buf.split_first_chunk::<N>()?;
        *buf = rest;
        Some(*head)
    }
    match wire {
        0 => prost::encoding::decode_varint(buf).ok().map(Raw::Varint),
        1 => take::<8>(buf).map(Raw::Fixed64),
        5 => take::<4>(buf).map(Raw::Fixed32),
        2 => {
            let len = usize::try_from(prost::encoding::decode_varint(buf).ok()?).ok()?;
            let (value, rest) = (buf.get(..len)?, buf.get(len..)?);
            *buf = rest;
            Some(Raw::Len(value))
        }
        _ => None,
    }
}

/// The top-level fields of checked bytes, in order.
struct Scan<'b>(&'b [u8]);

impl<'b> Iterator for Scan<'b> {
    type Item = (u32, Raw<'b>);
    fn next(&mut self) -> Option<Self::Item> {
        // Not past the end: prost's error on an empty buffer is an allocation.
        if self.0.is_empty() {
            return None;
        }
        let (number, wire) = key(&mut self.0)?;
        Some((number, raw(wire, &mut self.0)?))
    }
}

/// Whether a list of `kind` travels packed when it arrives length-delimited (prost-reflect's
/// `is_packable`: every scalar but strings and bytes).
fn packable(kind: Kind) -> bool {
    kind.wire() != 2
}

/// The elements of one occurrence of a list field.
fn elements<'b>(kind: Kind, raw: Raw<'b>, mut each: impl FnMut(Raw<'b>)) {
    match raw {
        Raw::Len(mut packed) if packable(kind) => {
            while !packed.is_empty()
                && let Some(r) = self::raw(kind.wire(), &mut packed)
            {
                each(r);
            }
        }
        r => each(r),
    }
}

impl ReplyWriter {
    /// Compiles the writer of a reply type.
    pub fn new(desc: &MessageDescriptor) -> Self {
        let plan = Plan::new(desc);
        let keys = plan
            .messages
            .iter()
            .map(|m| {
                m.fields
                    .iter()
                    .map(|f| {
                        let mut k = serde_json::to_vec(&*f.json_name).unwrap_or_default();
                        k.push(b':');
                        k.into_boxed_slice()
                    })
                    .collect()
            })
            .collect();
        Self { plan, keys }
    }

    /// Whether `bytes` are a message of this type that this pass reads exactly as
    /// `DynamicMessage::decode` does (see the module documentation); false: take the tree path.
    pub fn takes(&self, bytes: &[u8]) -> bool {
        self.check(0, bytes, 0)
    }

    fn check(&self, msg: usize, mut buf: &[u8], depth: u32) -> bool {
        if depth > MAX_DEPTH {
            return false;
        }
        let fields = &self.plan.messages[msg].fields;
        // Singular messages met (by field index): a second one would be merged into the first.
        let mut seen = 0u128;
        while !buf.is_empty() {
            let Some((number, wire)) = key(&mut buf) else {
                return false;
            };
            let Some((i, f)) = fields.iter().enumerate().find(|(_, f)| f.number == number) else {
                // Unknown to this contract: kept aside by the tree, never written.
                if raw(wire, &mut buf).is_none() {
                    return false;
                }
                continue;
            };
            if f.oneof {
                return false;
            }
            let ok = match f.shape {
                Shape::Map { .. } => false,
                Shape::Single { kind, .. } => {
                    if let Kind::Message(_) = kind {
                        if i >= 128 || seen & (1 << i) != 0 {
                            return false;
                        }
                        seen |= 1 << i;
                    }
                    self.value(kind, wire, &mut buf, depth)
                }
                Shape::List { kind, .. } if wire == 2 && packable(kind) => match raw(2, &mut buf) {
                    Some(Raw::Len(mut packed)) => {
                        let mut ok = true;
                        while ok && !packed.is_empty() {
                            ok = self.value(kind, kind.wire(), &mut packed, depth);
                        }
                        ok
                    }
                    _ => false,
                },
                Shape::List { kind, .. } => self.value(kind, wire, &mut buf, depth),
            };
            if !ok {
                return false;
            }
        }
        true
    }

    /// One value of `kind` arriving as `wire`: prost fails on any other wire type.
    fn value(&self, kind: Kind, wire: u32, buf: &mut &[u8], depth: u32) -> bool {
        if wire != kind.wire() {
            return false;
        }
        match (kind, raw(wire, buf)) {
            (_, None) => false,
            (Kind::String, Some(Raw::Len(b))) => std::str::from_utf8(b).is_ok(),
            (Kind::Message(m), Some(Raw::Len(b))) => self.check(m, b, depth + 1),
            _ => true,
        }
    }

    /// The top-level field with this JSON name (exactly, as `get_field_by_json_name`).
    pub fn field(&self, json_name: &str) -> Option<ReplyField> {
        self.field_in(0, json_name).map(ReplyField)
    }

    fn field_in(&self, msg: usize, json_name: &str) -> Option<usize> {
        self.plan.messages[msg]
            .fields
            .iter()
            .position(|f| &*f.json_name == json_name)
    }

    /// The top-level field with this field number.
    pub fn field_by_number(&self, number: u32) -> Option<ReplyField> {
        self.plan.messages[0]
            .fields
            .iter()
            .position(|f| f.number == number)
            .map(ReplyField)
    }

    /// The last occurrence of a top-level field in checked bytes.
    fn last<'b>(&self, msg: usize, bytes: &'b [u8], i: usize) -> Option<Raw<'b>> {
        let number = self.plan.messages[msg].fields[i].number;
        Scan(bytes)
            .filter(|(n, _)| *n == number)
            .map(|(_, r)| r)
            .last()
    }

    /// Whether the field is set in checked `bytes`, as `DynamicMessage::has_field` says: present
    /// for `optional` fields and messages, non-empty for lists, not the default for the rest.
    pub fn has(&self, bytes: &[u8], field: ReplyField) -> bool {
        self.has_in(0, bytes, field.0)
    }

    fn has_in(&self, msg: usize, bytes: &[u8], i: usize) -> bool {
        let f = &self.plan.messages[msg].fields[i];
        match f.shape {
            Shape::Map { .. } => false,
            Shape::List { kind, .. } => {
                let mut any = false;
                for (n, r) in Scan(bytes) {
                    if n == f.number {
                        elements(kind, r, |_| any = true);
                    }
                }
                any
            }
            Shape::Single { presence: true, .. } => self.last(msg, bytes, i).is_some(),
            Shape::Single { kind, .. } => self
                .last(msg, bytes, i)
                .is_some_and(|r| !self.is_default(kind, r)),
        }
    }

    fn is_default(&self, kind: Kind, r: Raw<'_>) -> bool {
        match (kind, r) {
            (Kind::Enum(e), Raw::Varint(v)) => {
                v as i32 == self.plan.enums[e].default_value().number()
            }
            (Kind::Float, Raw::Fixed32(b)) => f32::from_le_bytes(b) == 0.0,
            (Kind::Double, Raw::Fixed64(b)) => f64::from_le_bytes(b) == 0.0,
            // prost keeps the low 32 bits of a 32-bit varint; a bool is any non-zero varint.
            (Kind::Int32 | Kind::Sint32 | Kind::Uint32, Raw::Varint(v)) => v as u32 == 0,
            (_, Raw::Varint(v)) => v == 0,
            (_, Raw::Fixed32(b)) => b == [0; 4],
            (_, Raw::Fixed64(b)) => b == [0; 8],
            (_, Raw::Len(b)) => b.is_empty(),
        }
    }

    /// The value of a string field in checked `bytes` (the last one given, `""` when unset), as
    /// `get_field(..).as_str()`; `None` for a field that is not a single string.
    pub fn string<'b>(&self, bytes: &'b [u8], field: ReplyField) -> Option<&'b str> {
        let f = &self.plan.messages[0].fields[field.0];
        if !matches!(
            f.shape,
            Shape::Single {
                kind: Kind::String,
                ..
            }
        ) {
            return None;
        }
        match self.last(0, bytes, field.0) {
            Some(Raw::Len(b)) => std::str::from_utf8(b).ok(),
            _ => Some(""),
        }
    }

    /// The bytes of a single message field in checked `bytes`, when it is set.
    pub fn message<'b>(&self, bytes: &'b [u8], field: ReplyField) -> Option<&'b [u8]> {
        match self.last(0, bytes, field.0)? {
            Raw::Len(b) => Some(b),
            _ => None,
        }
    }

    /// The entries of a list-of-messages field in checked `bytes`, and how many of them have
    /// the field `key` (by JSON name) set; `None` when the field is not a list of messages.
    pub fn entries_with(
        &self,
        bytes: &[u8],
        list: ReplyField,
        key: &str,
    ) -> Option<(usize, usize)> {
        let f = &self.plan.messages[0].fields[list.0];
        let Shape::List {
            kind: Kind::Message(m),
            ..
        } = f.shape
        else {
            return None;
        };
        let key = self.field_in(m, key);
        let (mut all, mut kept) = (0, 0);
        for (n, r) in Scan(bytes) {
            if let (true, Raw::Len(b)) = (n == f.number, r) {
                all += 1;
                if key.is_some_and(|k| self.has_in(m, b, k)) {
                    kept += 1;
                }
            }
        }
        Some((all, kept))
    }

    /// Writes the fields of checked `bytes` as members of an object that already has members
    /// (`,"key":value` each), as [`super::encode`] writes the message after `edits`: in
    /// declaration order, `optional` fields and messages only when set, lists only when not
    /// empty, plain scalars always; `skip` left out.
    pub fn write_members(
        &self,
        bytes: &[u8],
        skip: Option<ReplyField>,
        edits: &[(ReplyField, Edit)],
        out: &mut Vec<u8>,
    ) {
        self.write_fields(0, bytes, skip, edits, false, out);
    }

    fn write_fields(
        &self,
        msg: usize,
        bytes: &[u8],
        skip: Option<ReplyField>,
        edits: &[(ReplyField, Edit)],
        mut first: bool,
        out: &mut Vec<u8>,
    ) {
        let mut key = |out: &mut Vec<u8>, i: usize| {
            if !first {
                out.push(b',');
            }
            first = false;
            out.extend_from_slice(&self.keys[msg][i]);
        };
        for (i, f) in self.plan.messages[msg].fields.iter().enumerate() {
            if skip == Some(ReplyField(i)) {
                continue;
            }
            let edit = edits.iter().find(|(field, _)| field.0 == i).map(|(_, e)| e);
            match (edit, f.shape) {
                (_, Shape::Map { .. }) => {}
                (Some(Edit::Fill(v)), shape) => {
                    let empty = v.as_array().is_some_and(Vec::is_empty)
                        && matches!(shape, Shape::List { .. });
                    if !empty {
                        key(out, i);
                        write_json(out, v);
                    }
                }
                (Some(Edit::Clear), Shape::Single { kind, presence }) => {
                    if !presence && !matches!(kind, Kind::Message(_)) {
                        key(out, i);
                        self.write_default(kind, out);
                    }
                }
                (Some(Edit::Clear), Shape::List { .. }) => {}
                (edit, Shape::List { kind, .. }) => {
                    let require = match (edit, kind) {
                        (Some(Edit::Require(k)), Kind::Message(m)) => Some(self.field_in(m, k)),
                        _ => None,
                    };
                    let mut open = false;
                    for (n, r) in Scan(bytes) {
                        if n != f.number {
                            continue;
                        }
                        elements(kind, r, |e| {
                            if let (Some(k), Kind::Message(m), Raw::Len(b)) = (require, kind, e)
                                && !k.is_some_and(|k| self.has_in(m, b, k))
                            {
                                return;
                            }
                            if open {
                                out.push(b',');
                            } else {
                                key(out, i);
                                out.push(b'[');
                                open = true;
                            }
                            self.write_value(kind, e, out);
                        });
                    }
                    if open {
                        out.push(b']');
                    }
                }
                (_, Shape::Single { kind, presence }) => match self.last(msg, bytes, i) {
                    Some(r) => {
                        key(out, i);
                        self.write_value(kind, r, out);
                    }
                    None if !presence => {
                        key(out, i);
                        self.write_default(kind, out);
                    }
                    None => {}
                },
            }
        }
    }

    fn write_default(&self, kind: Kind, out: &mut Vec<u8>) {
        match kind {
            Kind::Bool => out.extend_from_slice(b"false"),
            Kind::String | Kind::Bytes => out.extend_from_slice(b"\"\""),
            Kind::Float | Kind::Double => write_json(out, &0.0f64),
            Kind::Enum(e) => write_json(out, &self.plan.enums[e].default_value().number()),
            Kind::Message(m) => {
                out.push(b'{');
                self.write_fields(m, &[], None, &[], true, out);
                out.push(b'}');
            }
            _ => out.push(b'0'),
        }
    }

    /// One value, as `json::encode_value` and `serde_json` write it.
    fn write_value(&self, kind: Kind, r: Raw<'_>, out: &mut Vec<u8>) {
        let zigzag32 = |v: u64| {
            let v = v as u32;
            ((v >> 1) as i32) ^ (-((v & 1) as i32))
        };
        let zigzag64 = |v: u64| ((v >> 1) as i64) ^ (-((v & 1) as i64));
        match (kind, r) {
            (Kind::Bool, Raw::Varint(v)) => write_json(out, &(v != 0)),
            (Kind::Int32 | Kind::Enum(_), Raw::Varint(v)) => write_json(out, &(v as i32)),
            (Kind::Int64, Raw::Varint(v)) => write_json(out, &(v as i64)),
            (Kind::Uint32, Raw::Varint(v)) => write_json(out, &(v as u32)),
            (Kind::Uint64, Raw::Varint(v)) => write_json(out, &v),
            (Kind::Sint32, Raw::Varint(v)) => write_json(out, &zigzag32(v)),
            (Kind::Sint64, Raw::Varint(v)) => write_json(out, &zigzag64(v)),
            (Kind::Fixed32, Raw::Fixed32(b)) => write_json(out, &u32::from_le_bytes(b)),
            (Kind::Sfixed32, Raw::Fixed32(b)) => write_json(out, &i32::from_le_bytes(b)),
            // The tree widens a float to f64 before it becomes a JSON number.
            (Kind::Float, Raw::Fixed32(b)) => write_json(out, &f64::from(f32::from_le_bytes(b))),
            (Kind::Fixed64, Raw::Fixed64(b)) => write_json(out, &u64::from_le_bytes(b)),
            (Kind::Sfixed64, Raw::Fixed64(b)) => write_json(out, &i64::from_le_bytes(b)),
            (Kind::Double, Raw::Fixed64(b)) => write_json(out, &f64::from_le_bytes(b)),
            (Kind::String, Raw::Len(b)) => write_json(out, std::str::from_utf8(b).unwrap_or("")),
            (Kind::Bytes, Raw::Len(b)) => {
                write_json(out, &base64::engine::general_purpose::STANDARD.encode(b))
            }
            (Kind::Message(m), Raw::Len(b)) => {
                out.push(b'{');
                self.write_fields(m, b, None, &[], true, out);
                out.push(b'}');
            }
            // Not reached for checked bytes (the wire type matched the kind).
            (kind, _) => self.write_default(kind, out),
        }
    }
}

/// A JSON value as `serde_json` writes it (compact, its escaping, `null` for a non-finite float).
pub(crate) fn write_json<T: serde::Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) {
    // Writing into a Vec cannot fail, and every value written here serialises.
    let _ = serde_json::to_writer(&mut *out, value);
}
