//! The field plan of a message type, compiled once from its descriptor for the two one-pass
//! paths: the request transcoder (OpenIM JSON → protobuf, [`super::Transcoder`]) and the reply
//! writer (protobuf → OpenIM JSON, [`super::ReplyWriter`]). Field numbers, kinds, JSON names and
//! shapes in declaration order, nested types each once: no descriptor lookups per value.

use prost_reflect::{EnumDescriptor, MessageDescriptor};
use std::collections::HashMap;

/// A message type and every type it reaches.
#[derive(Debug, Clone)]
pub(super) struct Plan {
    /// Index 0 is the root message; nested types follow, each once (recursion allowed).
    pub(super) messages: Vec<MessagePlan>,
    pub(super) enums: Vec<EnumDescriptor>,
}

impl Plan {
    /// Compiles the plan of `desc`.
    pub(super) fn new(desc: &MessageDescriptor) -> Self {
        let mut b = Builder::default();
        b.message(desc);
        Self {
            messages: b.messages,
            enums: b.enums,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub(super) struct MessagePlan {
    /// In declaration order: the case-insensitive fallback takes the first match, like
    /// [`super::field_for_key`]; the JSON writer writes them in this order, as [`super::encode`].
    pub(super) fields: Vec<FieldPlan>,
    /// (JSON name, index into `fields`), sorted by name.
    pub(super) by_name: Vec<(Box<str>, usize)>,
}

#[derive(Debug, Clone)]
pub(super) struct FieldPlan {
    pub(super) number: u32,
    pub(super) json_name: Box<str>,
    pub(super) shape: Shape,
    /// A member of a real (not proto3 `optional`'s synthetic) oneof: setting it clears the others.
    pub(super) oneof: bool,
}

#[derive(Debug, Clone, Copy)]
pub(super) enum Shape {
    /// `presence`: written even when it holds the default (`optional`, messages).
    Single {
        kind: Kind,
        presence: bool,
    },
    List {
        kind: Kind,
        packed: bool,
    },
    Map {
        key: Kind,
        value: Kind,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Double,
    Float,
    Int32,
    Int64,
    Uint32,
    Uint64,
    Sint32,
    Sint64,
    Fixed32,
    Fixed64,
    Sfixed32,
    Sfixed64,
    Bool,
    String,
    Bytes,
    /// Index into `Plan::enums`.
    Enum(usize),
    /// Index into `Plan::messages`.
    Message(usize),
}

impl Kind {
    /// Integers and enums: what a JSON integer, or a string holding one, can fill.
    pub(super) fn integral(self) -> bool {
        !matches!(
            self,
            Kind::Double | Kind::Float | Kind::String | Kind::Bytes | Kind::Bool | Kind::Message(_)
        )
    }

    /// The protobuf wire type.
    pub(super) fn wire(self) -> u32 {
        match self {
            Kind::Double | Kind::Fixed64 | Kind::Sfixed64 => 1,
            Kind::Float | Kind::Fixed32 | Kind::Sfixed32 => 5,
            Kind::String | Kind::Bytes | Kind::Message(_) => 2,
            _ => 0,
        }
    }
}

#[derive(Default)]
struct Builder {
    messages: Vec<MessagePlan>,
    by_type: HashMap<String, usize>,
    enums: Vec<EnumDescriptor>,
    enum_by_type: HashMap<String, usize>,
}

impl Builder {
    fn message(&mut self, desc: &MessageDescriptor) -> usize {
        if let Some(&i) = self.by_type.get(desc.full_name()) {
            return i;
        }
        let i = self.messages.len();
        self.messages.push(MessagePlan::default());
        self.by_type.insert(desc.full_name().to_owned(), i);
        let fields: Vec<FieldPlan> = desc
            .fields()
            .map(|f| {
                let shape = match f.kind() {
                    prost_reflect::Kind::Message(entry) if f.is_map() => Shape::Map {
                        key: self.kind(entry.map_entry_key_field().kind()),
                        value: self.kind(entry.map_entry_value_field().kind()),
                    },
                    kind if f.is_list() => Shape::List {
                        kind: self.kind(kind),
                        packed: f.is_packed(),
                    },
                    kind => Shape::Single {
                        kind: self.kind(kind),
                        presence: f.supports_presence(),
                    },
                };
                FieldPlan {
                    number: f.number(),
                    json_name: f.json_name().into(),
                    shape,
                    oneof: f.containing_oneof().is_some_and(|o| !o.is_synthetic()),
                }
            })
            .collect();
        let mut by_name: Vec<(Box<str>, usize)> = fields
            .iter()
            .enumerate()
            .map(|(i, f)| (f.json_name.clone(), i))
            .collect();
        by_name.sort();
        self.messages[i] = MessagePlan { fields, by_name };
        i
    }

    fn kind(&mut self, kind: prost_reflect::Kind) -> Kind {
        use prost_reflect::Kind as K;
        match kind {
            K::Double => Kind::Double,
            K::Float => Kind::Float,
            K::Int32 => Kind::Int32,
            K::Int64 => Kind::Int64,
            K::Uint32 => Kind::Uint32,
            K::Uint64 => Kind::Uint64,
            K::Sint32 => Kind::Sint32,
            K::Sint64 => Kind::Sint64,
            K::Fixed32 => Kind::Fixed32,
            K::Fixed64 => Kind::Fixed64,
            K::Sfixed32 => Kind::Sfixed32,
            K::Sfixed64 => Kind::Sfixed64,
            K::Bool => Kind::Bool,
            K::String => Kind::String,
            K::Bytes => Kind::Bytes,
            K::Message(m) => Kind::Message(self.message(&m)),
            K::Enum(e) => {
                let i = match self.enum_by_type.get(e.full_name()) {
                    Some(&i) => i,
                    None => {
                        self.enum_by_type
                            .insert(e.full_name().to_owned(), self.enums.len());
                        self.enums.push(e);
                        self.enums.len() - 1
                    }
                };
                Kind::Enum(i)
            }
        }
    }
}
