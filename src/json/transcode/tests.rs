//! The one-pass transcoder against the tree decoder, on a contract with every kind and shape.
//! (`tests/fuzz_regressions.rs` does the same on every real payload, seed and fuzz input.)

use super::Transcoder;
use crate::json::decode;
use prost::Message as _;
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor};

const PROTO: &str = r#"
    syntax = "proto3";
    package k;
    enum Color { NONE = 0; RED = 1; BLUE = 2; }
    message Inner {
      string name = 1 [json_name = "name"];
      repeated Inner kids = 2 [json_name = "kids"];
      int32 n = 3 [json_name = "n"];
    }
    message All {
      double d = 1 [json_name = "d"];
      float f = 2 [json_name = "f"];
      int32 i32 = 3 [json_name = "i32"];
      int64 i64 = 4 [json_name = "i64"];
      uint32 u32 = 5 [json_name = "u32"];
      uint64 u64 = 6 [json_name = "u64"];
      sint32 s32 = 7 [json_name = "s32"];
      sint64 s64 = 8 [json_name = "s64"];
      fixed32 f32 = 9 [json_name = "f32"];
      fixed64 f64 = 10 [json_name = "f64"];
      sfixed32 sf32 = 11 [json_name = "sf32"];
      sfixed64 sf64 = 12 [json_name = "sf64"];
      bool b = 13 [json_name = "b"];
      string s = 14 [json_name = "groupID"];
      bytes by = 15 [json_name = "by"];
      Color c = 16 [json_name = "c"];
      Inner m = 17 [json_name = "m"];
      optional string os = 18 [json_name = "nickName"];
      optional int32 oi = 19 [json_name = "oi"];
      repeated int64 li = 20 [json_name = "li"];
      repeated string ls = 21 [json_name = "ls"];
      repeated Inner lm = 22 [json_name = "lm"];
      repeated sint32 lz = 23 [json_name = "lz"];
      repeated double ld = 24 [json_name = "ld"];
      map<string, bool> mb = 25 [json_name = "mb"];
      map<int64, Inner> mm = 26 [json_name = "mm"];
      map<bool, string> mk = 27 [json_name = "mk"];
      repeated Color lc = 28 [json_name = "lc"];
      uint32 big = 200 [json_name = "big"];
    }
"#;

fn all() -> MessageDescriptor {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("k.proto"), PROTO).expect("write");
    let fds = protox::compile(["k.proto"], [dir.path()]).expect("compiles");
    DescriptorPool::from_file_descriptor_set(fds)
        .expect("pool")
        .get_message_by_name("k.All")
        .expect("k.All")
}

/// Both paths on one body: `Some(fast)` must mean the same message and unknown keys as the tree
/// decoder with no errors. Returns whether the fast path took it.
fn same(desc: &MessageDescriptor, body: &str) -> bool {
    let t = Transcoder::new(desc);
    let fast = t.transcode(body.as_bytes());
    let slow = decode(desc, body.as_bytes());
    let Some(fast) = fast else {
        return false;
    };
    let slow =
        slow.unwrap_or_else(|e| panic!("fast path took a body the tree refuses: {e}: {body}"));
    assert!(
        slow.errors.is_empty(),
        "fast path took a body with field errors {:?}: {body}",
        slow.errors
    );
    let got = DynamicMessage::decode(desc.clone(), fast.payload.as_slice())
        .unwrap_or_else(|e| panic!("fast bytes do not decode: {e}: {body}"));
    let want = DynamicMessage::decode(desc.clone(), slow.message.encode_to_vec().as_slice())
        .expect("slow bytes decode");
    assert_eq!(got, want, "messages differ for {body}");
    assert_eq!(
        fast.unknown_keys, slow.unknown_keys,
        "unknown keys for {body}"
    );
    true
}

#[test]
fn every_kind_and_shape_matches_the_tree_decoder() {
    let d = all();
    for body in [
        r#"{}"#,
        r#"{"d":1.5,"f":-2.25,"i32":-7,"i64":-9007199254740993,"u32":4294967295,"u64":18446744073709551615}"#,
        r#"{"s32":-3,"s64":-9223372036854775808,"f32":7,"f64":"8","sf32":-1,"sf64":"-2","b":true}"#,
        r#"{"groupID":"g","by":"aGVsbG8=","c":"BLUE","m":{"name":"x","kids":[{"n":1},null,{}]}}"#,
        r#"{"c":2,"lc":["RED",2,null],"nickName":"","oi":0}"#,
        r#"{"li":[1,"2",null,-3],"ls":["a",null,""],"lm":[null,{"name":"n"}],"lz":[-1,0,1],"ld":[1,2.5]}"#,
        r#"{"mb":{"a":true,"b":false,"c":null},"mm":{"-5":{"n":2},"7":null},"mk":{"true":"y","false":""}}"#,
        r#"{"nickName":{"value":"n"},"oi":{"value":3},"i64":{"value":"12"},"li":[{"value":4}]}"#,
        r#"{"nickName":{"value":null},"oi":null,"m":null,"li":null,"mb":null}"#,
        r#"{"GROUPID":"upper","NickName":"mixed","unknown":{"deep":[1,2]},"m":{"zz":1,"kids":[{"yy":2}]}}"#,
        r#"{"i32":0,"d":0.0,"groupID":"","b":false,"c":"NONE","big":5,"u64":"0"}"#,
        r#"{"i64":1e3,"u32":2.0,"f":"1.5","d":" 2 ","i32":" 7 "}"#,
        r#"{"gr\u006fupID":"escaped key","ls":["\u00e9\n\"q\""]}"#,
        r#"{"m":{"name":"a long name, long enough that the nested message is over one hundred and twenty-eight bytes long, so its length takes two bytes"}}"#,
    ] {
        assert!(same(&d, body), "fast path gave up on {body}");
    }
}

#[test]
fn hands_back_what_it_cannot_treat_identically() {
    let d = all();
    for body in [
        // Field errors: the tree decoder names them.
        r#"{"groupID":5}"#,
        r#"{"i32":2147483648}"#,
        r#"{"u32":-1}"#,
        r#"{"i64":1.5}"#,
        r#"{"b":"yes"}"#,
        r#"{"li":"x"}"#,
        r#"{"m":"x"}"#,
        r#"{"c":"GREEN"}"#,
        r#"{"by":"***"}"#,
        r#"{"mk":{"maybe":"x"}}"#,
        r#"{"mm":{"x":{}}}"#,
        r#"{"nickName":{"value":"a","other":1}}"#,
        r#"{"nickName":{"value":{"value":"a"}}}"#,
        // A key twice: the tree keeps the last, a protobuf stream would merge.
        r#"{"groupID":"a","groupID":"b"}"#,
        r#"{"groupID":"a","groupid":"b"}"#,
        r#"{"lm":[{"n":1}],"LM":[{"n":2}]}"#,
        // `{"value": null}` in a list: the tree drops the element.
        r#"{"li":[{"value":null}]}"#,
        // Not one object.
        r#"[]"#,
        r#"{"#,
        r#"{} trailing"#,
        r#""s""#,
    ] {
        assert!(!same(&d, body), "fast path took {body}");
    }
}

#[test]
fn field_numbers_over_127_are_tracked_for_duplicates() {
    let d = all();
    assert!(same(&d, r#"{"big":1}"#));
    assert!(!same(&d, r#"{"big":1,"BIG":2}"#));
}
