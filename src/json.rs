//! OpenIM JSON <-> protobuf, driven by the message descriptors (docs/commands.md, "OpenIM traps").
//!
//! OpenIM speaks Go `encoding/json`, not protojson: keys are the struct tags, `null` means absent,
//! int64 values are JSON numbers, and its wrapper types travel as bare values. This module is the
//! only place that knows those rules; every command goes through the same two functions, [`decode`]
//! and [`encode`], with the request or reply descriptor from the catalogue.
//!
//! Decoding is liberal where OpenIM versions and its docs differ: wrapper fields may come as a bare
//! value or as `{"value": x}`, 64-bit (and 32-bit) integers as numbers or strings, keys exactly as
//! OpenIM spells them or, failing that, in another case (Go matches keys case-insensitively).
//! Unknown keys are collected, not rejected. Encoding is strict: integers are JSON numbers, unset
//! optional fields are left out, nested messages are written in full like Go writes its structs.
//!
//! The hot path does not build the tree: [`Transcoder`] streams a body straight into the request's
//! protobuf bytes under the same rules, and hands anything it cannot treat identically in one pass
//! (any field error, a key given twice) back to [`decode`], which stays the reference. The answer
//! goes the same way back: [`ReplyWriter`] writes a reply's protobuf bytes as the envelope's
//! members in one pass, and hands what it cannot write identically back to the tree
//! (`DynamicMessage` and [`encode`]).

use base64::Engine as _;
use prost_reflect::{
    DynamicMessage, FieldDescriptor, Kind, MapKey, MessageDescriptor, ReflectMessage, Value,
};
use serde_json::{Map, Number, Value as Json};

mod plan;
pub mod reply;
mod transcode;
pub use reply::ReplyWriter;
pub use transcode::{Transcoded, Transcoder};

/// The result of decoding one OpenIM body.
#[derive(Debug)]
pub struct Decoded {
    /// The message, with every field that could be read.
    pub message: DynamicMessage,
    /// Keys the descriptor does not know, as paths (`memberList[].nick`).
    pub unknown_keys: Vec<String>,
    /// Fields whose value had the wrong type or range; they were skipped.
    pub errors: Vec<FieldError>,
}

/// A field that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("field `{path}`: {problem}")]
pub struct FieldError {
    /// Path of the key in the body (`initMemberList[1].roleLevel`).
    pub path: String,
    /// What was wrong with it.
    pub problem: String,
}

/// Why a body could not be decoded at all.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The body is not JSON.
    #[error("body is not valid JSON: {0}")]
    Syntax(#[from] serde_json::Error),
    /// The body is JSON but not an object.
    #[error("body must be a JSON object, got {0}")]
    NotObject(&'static str),
}

/// Decodes an OpenIM body into a message of type `desc`.
///
/// Field-level problems do not fail the whole body: they are reported in [`Decoded::errors`] so the
/// caller can decide (the gateway treats any as bad input, but still uses what was read, e.g. to
/// echo `groupID` in a SetGroupInfo answer).
pub fn decode(desc: &MessageDescriptor, body: &[u8]) -> Result<Decoded, DecodeError> {
    let json: Json = serde_json::from_slice(body)?;
    match json {
        Json::Object(map) => Ok(decode_object(desc, &map)),
        other => Err(DecodeError::NotObject(type_name(&other))),
    }
}

/// Decodes an already parsed JSON object into a message of type `desc`.
pub fn decode_object(desc: &MessageDescriptor, map: &Map<String, Json>) -> Decoded {
    let mut out = Decoded {
        message: DynamicMessage::new(desc.clone()),
        unknown_keys: Vec::new(),
        errors: Vec::new(),
    };
    let mut ctx = Ctx {
        unknown: &mut out.unknown_keys,
        errors: &mut out.errors,
    };
    read_message(&mut out.message, map, &Path::Root, &mut ctx);
    out
}

struct Ctx<'a> {
    unknown: &'a mut Vec<String>,
    errors: &'a mut Vec<FieldError>,
}

impl Ctx<'_> {
    fn error(&mut self, path: &Path<'_>, problem: String) {
        self.errors.push(FieldError {
            path: path.render(true),
            problem,
        });
    }
}

/// Where a value sits in the body, built on the stack as decoding descends and rendered only
/// when an error or an unknown key needs it (no `String` per key on the hot path).
#[derive(Clone, Copy)]
enum Path<'a> {
    Root,
    Key(&'a Path<'a>, &'a str),
    Index(&'a Path<'a>, usize),
}

impl Path<'_> {
    /// `initMemberList[1].roleLevel`; with `indexes: false`, `initMemberList[].roleLevel`.
    fn render(&self, indexes: bool) -> String {
        let mut out = String::new();
        self.write(&mut out, indexes);
        out
    }

    fn write(&self, out: &mut String, indexes: bool) {
        match self {
            Path::Root => {}
            Path::Key(parent, key) => {
                parent.write(out, indexes);
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Path::Index(parent, i) => {
                parent.write(out, indexes);
                if indexes {
                    out.push_str(&format!("[{i}]"));
                } else {
                    out.push_str("[]");
                }
            }
        }
    }
}

/// Finds the field for a JSON key: the exact `json_name` first, then a case-insensitive match.
pub fn field_for_key(desc: &MessageDescriptor, key: &str) -> Option<FieldDescriptor> {
    desc.get_field_by_json_name(key).or_else(|| {
        desc.fields()
            .find(|f| f.json_name().eq_ignore_ascii_case(key))
    })
}

fn read_message(
    msg: &mut DynamicMessage,
    map: &Map<String, Json>,
    prefix: &Path<'_>,
    ctx: &mut Ctx,
) {
    let desc = msg.descriptor();
    for (key, json) in map {
        let path = Path::Key(prefix, key);
        let Some(field) = field_for_key(&desc, key) else {
            // Without list indexes, so that unknown keys count per key, not per element.
            ctx.unknown.push(path.render(false));
            continue;
        };
        if json.is_null() {
            // Go writes nil pointers, slices and wrappers as null: the same as absent.
            continue;
        }
        if let Some(value) = read_field(&field, json, &path, ctx) {
            msg.set_field(&field, value);
        }
    }
}

fn read_field(
    field: &FieldDescriptor,
    json: &Json,
    path: &Path<'_>,
    ctx: &mut Ctx,
) -> Option<Value> {
    if field.is_map() {
        return read_map(field, json, path, ctx);
    }
    if field.is_list() {
        let Json::Array(items) = json else {
            ctx.error(path, format!("expected an array, got {}", type_name(json)));
            return None;
        };
        let kind = field.kind();
        let mut list = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let item_path = Path::Index(path, i);
            if item.is_null() {
                // A nil element of a Go slice of pointers: keep the position with a default value.
                list.push(Value::default_value(&kind));
                continue;
            }
            if let Some(v) = read_single(&kind, item, &item_path, ctx) {
                list.push(v);
            }
        }
        return Some(Value::List(list));
    }
    read_single(&field.kind(), json, path, ctx)
}

fn read_map(field: &FieldDescriptor, json: &Json, path: &Path<'_>, ctx: &mut Ctx) -> Option<Value> {
    let Json::Object(obj) = json else {
        ctx.error(path, format!("expected an object, got {}", type_name(json)));
        return None;
    };
    let Kind::Message(entry) = field.kind() else {
        return None;
    };
    let key_kind = entry.map_entry_key_field().kind();
    let value_kind = entry.map_entry_value_field().kind();
    let mut out = std::collections::HashMap::with_capacity(obj.len());
    for (k, v) in obj {
        let item_path = Path::Key(path, k);
        let key = match key_kind {
            Kind::String => MapKey::String(k.clone()),
            Kind::Bool => match k.as_str() {
                "true" => MapKey::Bool(true),
                "false" => MapKey::Bool(false),
                _ => {
                    ctx.error(&item_path, "map key is not a boolean".into());
                    continue;
                }
            },
            ref int_kind => match read_single(int_kind, &Json::String(k.clone()), &item_path, ctx)
                .and_then(map_key_of)
            {
                Some(key) => key,
                None => continue,
            },
        };
        if v.is_null() {
            continue;
        }
        if let Some(value) = read_single(&value_kind, v, &item_path, ctx) {
            out.insert(key, value);
        }
    }
    Some(Value::Map(out))
}

fn map_key_of(v: Value) -> Option<MapKey> {
    match v {
        Value::I32(i) => Some(MapKey::I32(i)),
        Value::I64(i) => Some(MapKey::I64(i)),
        Value::U32(i) => Some(MapKey::U32(i)),
        Value::U64(i) => Some(MapKey::U64(i)),
        Value::Bool(b) => Some(MapKey::Bool(b)),
        Value::String(s) => Some(MapKey::String(s)),
        _ => None,
    }
}

fn read_single(kind: &Kind, json: &Json, path: &Path<'_>, ctx: &mut Ctx) -> Option<Value> {
    if let Kind::Message(desc) = kind {
        let Json::Object(obj) = json else {
            ctx.error(path, format!("expected an object, got {}", type_name(json)));
            return None;
        };
        let mut msg = DynamicMessage::new(desc.clone());
        read_message(&mut msg, obj, path, ctx);
        return Some(Value::Message(msg));
    }
    // OpenIM's wrapper types travel as bare values, but its docs (and the seed page of
    // callbackAfterSetGroupInfoExCommand) show `{"value": x}`: accept both for every scalar.
    let json = match json {
        Json::Object(obj) if obj.len() == 1 && obj.contains_key("value") => &obj["value"],
        other => other,
    };
    if json.is_null() {
        return None;
    }
    let result = match kind {
        Kind::String => match json {
            Json::String(s) => Ok(Value::String(s.clone())),
            other => Err(expected("a string", other)),
        },
        Kind::Bool => match json {
            Json::Bool(b) => Ok(Value::Bool(*b)),
            other => Err(expected("a boolean", other)),
        },
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
            integer(json, i32::MIN as i128, i32::MAX as i128, "int32").map(|i| Value::I32(i as i32))
        }
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => {
            integer(json, i64::MIN as i128, i64::MAX as i128, "int64").map(|i| Value::I64(i as i64))
        }
        Kind::Uint32 | Kind::Fixed32 => {
            integer(json, 0, u32::MAX as i128, "uint32").map(|i| Value::U32(i as u32))
        }
        Kind::Uint64 | Kind::Fixed64 => {
            integer(json, 0, u64::MAX as i128, "uint64").map(|i| Value::U64(i as u64))
        }
        Kind::Double => float(json).map(Value::F64),
        Kind::Float => float(json).map(|f| Value::F32(f as f32)),
        Kind::Bytes => match json {
            Json::String(s) => base64::engine::general_purpose::STANDARD
                .decode(s)
                .map(|b| Value::Bytes(b.into()))
                .map_err(|e| format!("not base64: {e}")),
            other => Err(expected("a base64 string", other)),
        },
        Kind::Enum(e) => match json {
            Json::String(s) => e
                .get_value_by_name(s)
                .map(|v| Value::EnumNumber(v.number()))
                .ok_or_else(|| format!("`{s}` is not a value of {}", e.name())),
            other => integer(json, i32::MIN as i128, i32::MAX as i128, "enum")
                .map_err(|_| expected("an enum name or number", other))
                .map(|i| Value::EnumNumber(i as i32)),
        },
        Kind::Message(_) => return None,
    };
    match result {
        Ok(v) => Some(v),
        Err(problem) => {
            ctx.error(path, problem);
            None
        }
    }
}

fn expected(what: &str, got: &Json) -> String {
    format!("expected {what}, got {}", type_name(got))
}

/// An integer given as a JSON number (integral) or as a string holding one.
fn integer(json: &Json, min: i128, max: i128, ty: &str) -> Result<i128, String> {
    let value: i128 = match json {
        Json::Number(n) => {
            if let Some(i) = n.as_i64() {
                i as i128
            } else if let Some(u) = n.as_u64() {
                u as i128
            } else {
                match n.as_f64() {
                    Some(f) if f.fract() == 0.0 && f.abs() < 1e38 => f as i128,
                    _ => return Err(format!("{n} is not an integer")),
                }
            }
        }
        Json::String(s) => s
            .trim()
            .parse::<i128>()
            .map_err(|_| format!("expected an integer, got the string {s:?}"))?,
        other => return Err(expected("an integer", other)),
    };
    if value < min || value > max {
        return Err(format!("{value} is out of range for {ty}"));
    }
    Ok(value)
}

fn float(json: &Json) -> Result<f64, String> {
    match json {
        Json::Number(n) => n.as_f64().ok_or_else(|| format!("{n} is not a number")),
        Json::String(s) => s
            .trim()
            .parse::<f64>()
            .map_err(|_| format!("expected a number, got the string {s:?}")),
        other => Err(expected("a number", other)),
    }
}

fn type_name(json: &Json) -> &'static str {
    match json {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "an array",
        Json::Object(_) => "an object",
    }
}

/// Encodes a message as OpenIM JSON.
///
/// Fields with presence (proto3 `optional`, messages) are written only when set; plain scalars are
/// always written, as Go writes its non-pointer fields; lists and maps only when non-empty (empty
/// and `null` mean the same to OpenIM). `skip` names fields (by proto name) to leave out, such as
/// `rejection`, which is not an OpenIM key.
pub fn encode(msg: &DynamicMessage, skip: &[&str]) -> Map<String, Json> {
    let mut out = Map::new();
    for field in msg.descriptor().fields() {
        if skip.contains(&field.name()) {
            continue;
        }
        if let Some(v) = encode_field(msg, &field) {
            out.insert(field.json_name().to_owned(), v);
        }
    }
    out
}

/// Encodes one field of `msg`, or `None` when it is not to be written (see [`encode`]).
pub fn encode_field(msg: &DynamicMessage, field: &FieldDescriptor) -> Option<Json> {
    // Before `get_field`, which builds the default of an unset field.
    if !field.is_list() && !field.is_map() && field.supports_presence() && !msg.has_field(field) {
        return None;
    }
    let value = msg.get_field(field);
    if field.is_list() || field.is_map() {
        let empty = match value.as_ref() {
            Value::List(l) => l.is_empty(),
            Value::Map(m) => m.is_empty(),
            _ => true,
        };
        if empty {
            return None;
        }
    } else if field.supports_presence() && !msg.has_field(field) {
        return None;
    }
    Some(encode_value(&value))
}

/// Encodes one protobuf value as OpenIM JSON.
pub fn encode_value(value: &Value) -> Json {
    match value {
        Value::Bool(b) => Json::Bool(*b),
        Value::I32(i) => Json::from(*i),
        Value::I64(i) => Json::from(*i),
        Value::U32(i) => Json::from(*i),
        Value::U64(i) => Json::from(*i),
        Value::F32(f) => Number::from_f64(f64::from(*f)).map_or(Json::Null, Json::Number),
        Value::F64(f) => Number::from_f64(*f).map_or(Json::Null, Json::Number),
        Value::String(s) => Json::String(s.clone()),
        Value::Bytes(b) => Json::String(base64::engine::general_purpose::STANDARD.encode(b)),
        Value::EnumNumber(n) => Json::from(*n),
        Value::Message(m) => Json::Object(encode(m, &[])),
        Value::List(items) => Json::Array(items.iter().map(encode_value).collect()),
        Value::Map(entries) => {
            let mut obj = Map::new();
            let mut sorted: Vec<_> = entries.iter().collect();
            sorted.sort_by_key(|(k, _)| map_key_string(k));
            for (k, v) in sorted {
                obj.insert(map_key_string(k), encode_value(v));
            }
            Json::Object(obj)
        }
    }
}

fn map_key_string(k: &MapKey) -> String {
    match k {
        MapKey::Bool(b) => b.to_string(),
        MapKey::I32(i) => i.to_string(),
        MapKey::I64(i) => i.to_string(),
        MapKey::U32(i) => i.to_string(),
        MapKey::U64(i) => i.to_string(),
        MapKey::String(s) => s.clone(),
    }
}

/// Removes `null` members recursively, so that two OpenIM bodies can be compared with
/// "`null` ≡ absent" (Go's `encoding/json`, which OpenIM uses).
pub fn strip_nulls(json: &Json) -> Json {
    match json {
        Json::Object(map) => Json::Object(
            map.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), strip_nulls(v)))
                .collect(),
        ),
        Json::Array(items) => Json::Array(items.iter().map(strip_nulls).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost_reflect::DescriptorPool;

    /// A small contract of its own, so the codec is tested apart from the product's protos.
    const TEST_PROTO: &str = r#"
        syntax = "proto3";
        package t;
        message T {
          string s = 1 [json_name = "groupID"];
          optional string o = 2 [json_name = "nickName"];
          int64 big = 3 [json_name = "sendTime"];
          optional int32 w = 4 [json_name = "needVerification"];
          repeated int64 l = 5 [json_name = "Seqs"];
          repeated T kids = 6 [json_name = "kids"];
          map<string, bool> m = 7 [json_name = "options"];
          uint32 u = 8 [json_name = "memberCount"];
          bool b = 9 [json_name = "isPinned"];
        }
    "#;

    fn pool() -> DescriptorPool {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("t.proto"), TEST_PROTO).expect("write");
        let fds = protox::compile(["t.proto"], [dir.path()]).expect("compiles");
        DescriptorPool::from_file_descriptor_set(fds).expect("pool")
    }

    fn t() -> MessageDescriptor {
        pool().get_message_by_name("t.T").expect("t.T")
    }

    fn dec(body: &str) -> Decoded {
        decode(&t(), body.as_bytes()).expect("decodes")
    }

    #[test]
    fn reads_exact_keys_and_keeps_null_distinct_from_empty() {
        let d = dec(r#"{"groupID":"g1","nickName":null,"needVerification":0}"#);
        assert!(d.errors.is_empty() && d.unknown_keys.is_empty());
        let m = &d.message;
        assert_eq!(m.get_field_by_name("s").unwrap().as_str(), Some("g1"));
        assert!(!m.has_field_by_name("o"), "null is absent");
        assert!(
            m.has_field_by_name("w"),
            "0 is present for an optional field"
        );
        let d = dec(r#"{"nickName":""}"#);
        assert!(
            d.message.has_field_by_name("o"),
            "\"\" is present, unlike null"
        );
    }

    #[test]
    fn accepts_wrapper_objects_and_numbers_as_strings() {
        let d = dec(
            r#"{"nickName":{"value":"n"},"needVerification":{"value":2},"sendTime":"1719800000123","memberCount":"7"}"#,
        );
        assert!(d.errors.is_empty(), "{:?}", d.errors);
        let m = &d.message;
        assert_eq!(m.get_field_by_name("o").unwrap().as_str(), Some("n"));
        assert_eq!(m.get_field_by_name("w").unwrap().as_i32(), Some(2));
        assert_eq!(
            m.get_field_by_name("big").unwrap().as_i64(),
            Some(1719800000123)
        );
        assert_eq!(m.get_field_by_name("u").unwrap().as_u32(), Some(7));
    }

    #[test]
    fn counts_unknown_keys_with_paths_and_ignores_them() {
        let d = dec(r#"{"groupID":"g","extra":1,"kids":[{"zz":1},{"zz":2,"groupID":"k"}]}"#);
        assert_eq!(d.unknown_keys, vec!["extra", "kids[].zz", "kids[].zz"]);
        assert!(d.errors.is_empty());
    }

    #[test]
    fn falls_back_to_case_insensitive_keys() {
        let d = dec(r#"{"groupid":"g","seqs":[1,2]}"#);
        assert!(d.unknown_keys.is_empty());
        assert_eq!(
            d.message.get_field_by_name("s").unwrap().as_str(),
            Some("g")
        );
    }

    #[test]
    fn reports_wrong_types_and_ranges_per_field_and_keeps_the_rest() {
        let d = dec(
            r#"{"groupID":5,"needVerification":4294967297,"sendTime":1.5,"isPinned":"yes","Seqs":"x","nickName":"ok"}"#,
        );
        let paths: Vec<_> = d.errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            vec![
                "groupID",
                "needVerification",
                "sendTime",
                "isPinned",
                "Seqs"
            ]
        );
        assert!(d.errors[1].problem.contains("out of range"));
        assert_eq!(
            d.message.get_field_by_name("o").unwrap().as_str(),
            Some("ok")
        );
    }

    #[test]
    fn rejects_non_objects_and_bad_syntax() {
        assert!(matches!(
            decode(&t(), b"[]"),
            Err(DecodeError::NotObject(_))
        ));
        assert!(matches!(decode(&t(), b"{"), Err(DecodeError::Syntax(_))));
        assert!(matches!(
            decode(&t(), b"{} trailing"),
            Err(DecodeError::Syntax(_))
        ));
        assert!(
            decode(&t(), b"{\"groupID\":\"g\"}\n").is_ok(),
            "Go's trailing newline"
        );
    }

    #[test]
    fn encodes_like_go_with_int64_numbers_and_only_set_optionals() {
        let d = dec(
            r#"{"groupID":"","sendTime":"9007199254740993","kids":[{"groupID":"k"}],"options":{"a":true}}"#,
        );
        let json = Json::Object(encode(&d.message, &[]));
        assert_eq!(
            json,
            serde_json::json!({
                "groupID": "", "sendTime": 9007199254740993_i64,
                "kids": [{"groupID": "k", "sendTime": 0, "memberCount": 0, "isPinned": false}],
                "options": {"a": true}, "memberCount": 0, "isPinned": false
            })
        );
        let json = Json::Object(encode(&d.message, &["s", "big", "u", "b"]));
        assert!(!json.as_object().unwrap().contains_key("groupID"));
    }

    #[test]
    fn strip_nulls_is_recursive() {
        let j = serde_json::json!({"a": null, "b": [{"c": null, "d": 1}]});
        assert_eq!(strip_nulls(&j), serde_json::json!({"b": [{"d": 1}]}));
    }
}
