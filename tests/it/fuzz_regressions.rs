//! The fuzz targets' inputs as ordinary tests: the committed seeds, adversarial bodies, replies
//! and statuses, and (when the fuzzer finds one) each minimised crash. Every input goes through
//! the exact function its fuzz target calls (`fuzz/src/check.rs`, included here), so every
//! invariant the fuzzer checks is checked here too: no panic, a well-formed envelope, the docs/commands.md
//! reply rules. See fuzz/README.md.

// The fuzz crate's module, public there.
#[allow(unreachable_pub)]
#[path = "../../fuzz/src/check.rs"]
mod check;

use check::Harness;
use openim_callback_gateway::envelope;
use prost::Message as _;
use prost_reflect::Kind;
use serde_json::{Value as Json, json};
use std::path::{Path, PathBuf};
use std::sync::LazyLock;

fn data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/payloads")
}

fn h() -> &'static Harness {
    static H: LazyLock<Harness> = LazyLock::new(|| Harness::new(&data()));
    &H
}

/// A `decode` input: the command byte and the body.
fn decode(command: &str, body: &[u8]) {
    let mut input = vec![h().decode_byte(command)];
    input.extend_from_slice(body);
    check::decode(h(), &input);
}

/// The protobuf of an OpenIM reply body for `command`, as `read_reply` reads it.
fn reply_bytes(command: &str, body: &Json) -> Vec<u8> {
    let entry = h()
        .entries
        .iter()
        .find(|e| e.row.command == command)
        .unwrap();
    envelope::read_reply(entry, body.as_object().unwrap())
        .message
        .encode_to_vec()
}

/// A `reply` input under every policy byte (fail open/closed, offlinePushInfo switch, real or
/// empty request).
fn reply(command: &str, bytes: &[u8]) {
    for policy in 0..8u8 {
        let mut input = vec![h().reply_byte(command), policy];
        input.extend_from_slice(bytes);
        check::reply(h(), &input);
    }
}

/// A `status` input under every policy byte.
fn status(command: &str, code: tonic::Code, message: &[u8], details: &[u8]) {
    for policy in 0..8u8 {
        let mut input = vec![
            h().reply_byte(command),
            policy,
            code as u8,
            u8::try_from(message.len()).unwrap(),
        ];
        input.extend_from_slice(message);
        input.extend_from_slice(details);
        check::status(h(), &input);
    }
}

fn commands() -> impl Iterator<Item = &'static str> {
    h().entries.iter().map(|e| e.row.command)
}

#[test]
fn every_committed_seed_passes_its_target() {
    let seeds = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds");
    let mut n = 0;
    for (target, run) in [
        ("decode", check::decode as fn(&Harness, &[u8])),
        ("reply", check::reply),
        ("status", check::status),
    ] {
        for file in std::fs::read_dir(seeds.join(target)).unwrap() {
            run(h(), &std::fs::read(file.unwrap().path()).unwrap());
            n += 1;
        }
    }
    assert!(n >= 52, "only {n} seeds");
}

#[test]
fn seeds_are_what_seed_sh_writes() {
    let seeds = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds");
    for (target, name, bytes) in check::seeds(h(), &data()) {
        let path = seeds.join(target).join(&name);
        assert_eq!(
            std::fs::read(&path).ok(),
            Some(bytes),
            "{}: run fuzz/seed.sh",
            path.display()
        );
    }
}

#[test]
fn non_objects_and_broken_json_get_the_failure_envelope() {
    let bodies: &[&[u8]] = &[
        b"",
        b"\n",
        b"null",
        b"[]",
        b"\"x\"",
        b"1e999",
        b"{",
        b"{\"groupID\":}",
        b"{} {}",
        b"\xef\xbb\xbf{}", // a UTF-8 BOM
        b"{\"groupID\":\"\xff\xfe\"}",
        b"{\"\xc3\x28\":1}",
        b"{\"groupID\":\"a\x00b\"}",
    ];
    for command in commands() {
        for body in bodies {
            decode(command, body);
        }
    }
}

#[test]
fn deep_nesting_is_refused_without_a_stack_overflow() {
    for depth in [127, 128, 129, 10_000, 100_000] {
        let arrays = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        let objects = format!("{}1{}", "{\"a\":".repeat(depth), "}".repeat(depth));
        for command in commands() {
            decode(command, format!("{{\"groupID\":{arrays}}}").as_bytes());
            decode(command, objects.as_bytes());
            decode(command, "[".repeat(depth).as_bytes());
        }
    }
    // Nested through a real list-of-messages field, as deep as the descriptor allows and beyond.
    for depth in [60, 200] {
        let mut member = json!({"userID": "u"});
        for _ in 0..depth {
            member = json!({"userID": "u", "memberList": [member]});
        }
        for command in commands() {
            decode(
                command,
                json!({"memberList": [member], "initMemberList": [member]})
                    .to_string()
                    .as_bytes(),
            );
        }
    }
}

/// Every scalar field of every request, at the top level and as a `{"value": x}` wrapper, with
/// numbers at and past every integer kind's range, as strings and as floats, and values of the
/// wrong type.
#[test]
fn huge_numbers_and_wrong_types_in_every_field() {
    let values: Vec<Json> = vec![
        json!(0),
        json!(-1),
        json!(i32::MAX),
        json!(i64::from(i32::MAX) + 1),
        json!(i32::MIN),
        json!(i64::from(i32::MIN) - 1),
        json!(u32::MAX),
        json!(u64::from(u32::MAX) + 1),
        json!(i64::MAX),
        json!(i64::MIN),
        json!(u64::MAX),
        json!(1.5),
        json!(-0.0),
        json!(1e38),
        json!(-1e38),
        json!(1e300),
        json!(f64::MAX),
        json!(f64::MIN_POSITIVE),
        json!("9223372036854775808"),
        json!("-9223372036854775809"),
        json!("18446744073709551616"),
        json!("170141183460469231731687303715884105728"),
        json!("99999999999999999999999999999999999999999999999"),
        json!(" 42 "),
        json!("0x10"),
        json!("1e3"),
        json!("NaN"),
        json!("inf"),
        json!(""),
        json!(true),
        json!([]),
        json!([1, null, "2"]),
        json!({}),
        json!({"value": null}),
        json!({"value": {"value": 1}}),
        json!("!!not base64!!"),
        json!("\u{0}\u{1}\u{2}"),
    ];
    // Past what serde_json's f64 holds: written by hand.
    let raw = [
        "1e400",
        "-1e400",
        "123456789012345678901234567890",
        "-123456789012345678901234567890",
        "1E+2",
        "0.0000000000000000000000000001",
    ];
    for entry in &h().entries {
        let command = entry.row.command;
        for field in entry.request().fields() {
            let key = field.json_name();
            for v in &values {
                decode(command, json!({ key: v }).to_string().as_bytes());
                decode(command, json!({ key: {"value": v} }).to_string().as_bytes());
                if field.is_list() {
                    decode(command, json!({ key: [v, v] }).to_string().as_bytes());
                }
            }
            for r in raw {
                decode(command, format!("{{\"{key}\":{r}}}").as_bytes());
                decode(command, format!("{{\"{key}\":[{r}]}}").as_bytes());
            }
            if let Kind::Message(m) = field.kind() {
                for inner in m.fields() {
                    for v in &values {
                        let body = json!({ key: { inner.json_name(): v } });
                        decode(command, body.to_string().as_bytes());
                        let body = json!({ key: [{ inner.json_name(): v }] });
                        decode(command, body.to_string().as_bytes());
                    }
                }
            }
        }
    }
}

#[test]
fn duplicate_keys_and_keys_in_another_case() {
    for command in commands() {
        decode(
            command,
            br#"{"groupID":"a","groupID":"b","GROUPID":"c","groupid":null,"GroupId":5}"#,
        );
        decode(
            command,
            br#"{"sendID":"a","SENDID":"b","sendID":{"value":"c"},"sendid":[]}"#,
        );
    }
    // Each command's real payload with every key repeated, once in upper case.
    for command in commands() {
        let text = std::fs::read_to_string(data().join(format!("{command}.json"))).unwrap();
        let body: Json = serde_json::from_str(&text).unwrap();
        let mut doubled = String::from("{");
        for (i, (k, v)) in body.as_object().unwrap().iter().enumerate() {
            if i > 0 {
                doubled.push(',');
            }
            doubled.push_str(&format!("{k:?}:{v},{:?}:{v}", k.to_uppercase()));
        }
        doubled.push('}');
        decode(command, doubled.as_bytes());
    }
}

#[test]
fn unicode_escapes_lone_surrogates_and_control_characters() {
    let strings = [
        r#""\ud800""#,
        r#""\udfff""#,
        r#""\udc00\ud800""#,
        r#""\ud83d\ude00""#,
        r#""\ud83d""#,
        r#""\u0000""#,
        r#""\u0002""#,
        r#""\u003c\u003e\u0026""#,
        r#""\uFFFF\uFFFE""#,
        r#""\u12""#,
        r#""\x41""#,
        "\"\t\"",
    ];
    for command in commands() {
        for s in strings {
            decode(
                command,
                format!("{{\"groupID\":{s},\"sendID\":{s}}}").as_bytes(),
            );
            decode(command, format!("{{{s}:1}}").as_bytes());
            decode(
                command,
                format!("{{\"content\":{s},\"ex\":{s}}}").as_bytes(),
            );
        }
    }
}

#[test]
fn msg_modify_content_must_be_a_json_object_string() {
    let command = "callbackBeforeMsgModifyCommand";
    let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
    let deep_object = format!("{}1{}", "{\"a\":".repeat(200), "}".repeat(200));
    for content in [
        "{\"content\":\"hi\"}",
        "{}",
        "[]",
        "\"{}\"",
        "",
        " {} ",
        "{} x",
        "{\"a\":1,\"a\":2}",
        "{\"a\":\"\\ud800\"}",
        "{\"a\":1e400}",
        "null",
        &deep,
        &deep_object,
    ] {
        for extra in [
            json!({}),
            json!({"offlinePushInfo": {"title": "t", "desc": "d"}}),
        ] {
            let mut body = json!({"content": content, "ex": "e"});
            body.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            reply(command, &reply_bytes(command, &body));
        }
    }
}

#[test]
fn member_entries_without_user_id_and_null_request_fields() {
    let command = "callbackBeforeMembersJoinGroupCommand";
    let body = json!({"memberCallbackList": [
        {"userID": "u1", "nickname": "a"},
        {"nickname": "no user"},
        {"userID": ""},
        {},
        {"userID": "u2"}
    ]});
    reply(command, &reply_bytes(command, &body));
    let command = "callbackBeforeUpdateUserInfoExCommand";
    let body = json!({"nickName": "n", "faceURL": "f", "ex": "e"});
    reply(command, &reply_bytes(command, &body));
    for command in [
        "callbackBeforeSetGroupInfoCommand",
        "callbackBeforeSetGroupInfoExCommand",
    ] {
        reply(command, &[]);
        reply(command, &reply_bytes(command, &json!({"groupName": "x"})));
    }
}

/// Replies that are not the response message: garbage, truncated, wrong wire types, invalid
/// UTF-8 in a string, nesting past prost's recursion limit, huge length prefixes.
#[test]
fn undecodable_and_hostile_upstream_replies() {
    let mut nested = Vec::new();
    for _ in 0..200 {
        let mut outer = vec![0x0a]; // field 1 (rejection), length-delimited
        prost::encoding::encode_varint(nested.len() as u64, &mut outer);
        outer.extend_from_slice(&nested);
        nested = outer;
    }
    let replies: Vec<Vec<u8>> = vec![
        vec![],
        vec![0x00],
        vec![0xff; 16],
        vec![0x0a],
        vec![0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f],
        vec![0x0a, 0x02, 0x12, 0x05],
        vec![0x0a, 0x04, 0x12, 0x02, 0xc3, 0x28], // rejection.message: invalid UTF-8
        vec![0x0a, 0x02, 0x08, 0x00],             // rejection.code 0: the default code
        [
            &[0x0a, 0x0b, 0x08][..],
            &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01],
        ]
        .concat(), // rejection.code -1
        vec![0x08, 0x01],                         // field 1 as a varint: wrong wire type
        vec![0xfa, 0xff, 0xff, 0xff, 0x0f, 0x00], // an unknown field number near the limit
        vec![0x0b, 0x0c],                         // a group
        nested,
    ];
    for command in commands() {
        for r in &replies {
            let mut input = vec![h().reply_byte(command), 0];
            input.extend_from_slice(r);
            for policy in 0..8u8 {
                input[1] = policy;
                check::reply(h(), &input);
            }
        }
    }
}

#[test]
fn statuses_with_any_code_message_and_details() {
    let good = openim_callback_gateway::decision::rejection_details(0, "m", "d");
    let negative = openim_callback_gateway::decision::rejection_details(-5, "m", "d");
    for command in commands() {
        for code in 0..20 {
            let code = tonic::Code::from(code);
            for (message, details) in [
                (&b""[..], &b""[..]),
                (b"denied", &good[..]),
                (b"", &negative[..]),
                (b"\xff\xfe bad utf-8", &[0xff, 0x00][..]),
                (b"x", &good[..good.len() - 1]),
            ] {
                status(command, code, message, details);
            }
        }
    }
}

/// `FUZZ_SEED`, else one from the clock (the tests print it, so a run can be reproduced).
fn fuzz_seed() -> u64 {
    std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        })
}

/// A bounded mutation-fuzz pass for CI (the coverage-guided libFuzzer runs live in `fuzz/`):
/// every seed of every target, mutated at random (bit flips, byte edits, truncation, splices of
/// another seed, JSON-ish tokens), through the same checks. `FUZZ_SEED` reproduces a run (the
/// seed is printed); `FUZZ_ITERATIONS` sets its length.
#[test]
fn bounded_mutation_pass_over_the_seeds() {
    let seed = fuzz_seed();
    let iterations: usize = std::env::var("FUZZ_ITERATIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(150_000);
    println!("bounded mutation pass: FUZZ_SEED={seed} FUZZ_ITERATIONS={iterations}");
    let mut rng = fastrand::Rng::with_seed(seed);
    let seeds = check::seeds(h(), &data());
    let tokens: &[&[u8]] = &[
        b"null",
        b"true",
        b"[]",
        b"{}",
        b"\"\"",
        b"1e400",
        b"-1",
        b"18446744073709551616",
        b"\\u0000",
        b"\\ud800",
        b"{\"value\":",
        b"[[[[[[[[",
        b"\xff",
        b",",
        b":",
        b"\"",
    ];
    for i in 0..iterations {
        let (target, _, base) = &seeds[rng.usize(..seeds.len())];
        let mut input = base.clone();
        for _ in 0..rng.usize(1..=8) {
            // Keep the leading selector bytes mostly intact so that every command is reached.
            let lo = 1.min(input.len());
            match rng.u8(..6) {
                0 if input.len() > lo => {
                    let at = rng.usize(lo..input.len());
                    input[at] ^= 1 << rng.u8(..8);
                }
                1 if input.len() > lo => {
                    let at = rng.usize(lo..input.len());
                    input[at] = rng.u8(..);
                }
                2 if input.len() > lo => {
                    let at = rng.usize(lo..=input.len());
                    input.truncate(at);
                }
                3 => {
                    let (_, _, other) = &seeds[rng.usize(..seeds.len())];
                    if !other.is_empty() {
                        let from = rng.usize(..other.len());
                        let to = rng.usize(from..=other.len());
                        let at = rng.usize(lo..=input.len());
                        input.splice(at..at, other[from..to].iter().copied());
                    }
                }
                4 => {
                    let token = tokens[rng.usize(..tokens.len())];
                    let at = rng.usize(lo..=input.len());
                    input.splice(at..at, token.iter().copied());
                }
                _ if input.len() > lo => {
                    let at = rng.usize(lo..input.len());
                    let end = rng.usize(at..=input.len().min(at + 16));
                    input.drain(at..end);
                }
                _ => {}
            }
        }
        let run = std::panic::catch_unwind(|| match *target {
            "decode" => check::decode(h(), &input),
            "reply" => check::reply(h(), &input),
            _ => check::status(h(), &input),
        });
        assert!(
            run.is_ok(),
            "iteration {i} of FUZZ_SEED={seed}: {target} failed on {:?}",
            String::from_utf8_lossy(&input)
        );
    }
}

/// The hot path's one-pass transcoder takes every real body and its liberal variants (numbers as
/// strings, `{"value": x}`, keys in another case, `null`s, unknown keys), and `check::decode`
/// holds each to the tree decoder's reading; a key given twice or a wrong type goes back to the
/// tree decoder, which names the problem.
#[test]
fn the_transcoder_takes_real_bodies_and_reads_them_as_the_tree_decoder_does() {
    let wire = |j: &Json| {
        let mut v = serde_json::to_vec(j).unwrap();
        v.push(b'\n');
        v
    };
    let mut variants = 0;
    for entry in &h().entries {
        let command = entry.row.command;
        let body: Json =
            serde_json::from_slice(&std::fs::read(data().join(format!("{command}.json"))).unwrap())
                .unwrap();
        let obj = body.as_object().unwrap();
        let fast = |bytes: &[u8]| entry.transcoder.transcode(bytes).is_some();
        assert!(
            fast(&wire(&body)),
            "{command}: the real body goes the slow way"
        );
        decode(command, &wire(&body));
        for (key, value) in obj {
            let with = |k: &str, v: Json| {
                let mut o = obj.clone();
                o.shift_remove(key);
                o.insert(k.to_owned(), v);
                wire(&Json::Object(o))
            };
            let mut liberal = vec![
                with(&key.to_lowercase(), value.clone()),
                with(key, Json::Null),
                with(&format!("{key}Unknown"), value.clone()),
            ];
            match value {
                Json::Number(n) => {
                    liberal.push(with(key, Json::String(n.to_string())));
                    liberal.push(with(key, json!({ "value": value })));
                }
                Json::String(_) | Json::Bool(_) => {
                    liberal.push(with(key, json!({ "value": value })))
                }
                _ => {}
            }
            for bytes in liberal {
                assert!(
                    fast(&bytes),
                    "{command}: {}",
                    String::from_utf8_lossy(&bytes)
                );
                decode(command, &bytes);
                variants += 1;
            }
            // Twice (once in another case): the tree decoder keeps the last.
            let text = String::from_utf8(wire(&body)).unwrap();
            let twice = format!("{{\"{}\":{value},{}", key.to_uppercase(), &text[1..]);
            assert!(!fast(twice.as_bytes()), "{command}: {twice}");
            decode(command, twice.as_bytes());
            if value.is_string() {
                let wrong = with(key, json!(true));
                assert!(!fast(&wrong), "{command}: a boolean for `{key}`");
                decode(command, &wrong);
            }
        }
    }
    assert!(variants > 1000, "only {variants} variants");
}

/// The `Target` of a reply check: the command's real request (`real`) or an empty one.
fn target<'a>(
    entry: &'a openim_callback_gateway::catalog::CommandEntry,
    request: &'a prost_reflect::DynamicMessage,
    policy: &'a openim_callback_gateway::decision::Policy,
) -> envelope::Target<'a> {
    envelope::Target {
        entry,
        request: Some(request),
        policy,
    }
}

/// Every real sample reply (`<command>.response.json`, read as OpenIM reads it) is written in one
/// pass, byte for byte as the tree writes it, under every policy and with the real, an empty and
/// no request; so are the empty reply and a reply of nothing but the rejection.
#[test]
fn the_reply_writer_writes_every_sample_reply_as_the_tree_does() {
    let mut samples = 0;
    for entry in &h().before {
        let command = entry.row.command;
        let sample = data().join(format!("{command}.response.json"));
        let body: Json = serde_json::from_slice(&std::fs::read(&sample).unwrap()).unwrap();
        let bytes = reply_bytes(command, &body);
        let empty_request = prost_reflect::DynamicMessage::new(entry.request());
        for policy_byte in 0..4u8 {
            let p = check::policy(policy_byte);
            for request in [h().request(command), &empty_request] {
                for reply in [&bytes[..], &[]] {
                    assert!(
                        check::one_pass_is_the_tree(entry, reply, target(entry, request, &p)),
                        "{command}: the sample reply takes the tree path"
                    );
                }
            }
            let none = envelope::Target {
                entry,
                request: None,
                policy: &p,
            };
            assert!(check::one_pass_is_the_tree(entry, &bytes, none));
        }
        samples += 1;
    }
    assert_eq!(samples, 23);
}

/// Generated replies for every before command: random values in every field of the reply type
/// (strings with escapes, control characters, non-ASCII and JSON objects; integers at their
/// limits; nested messages; lists, some entries without their key), sometimes a rejection, then
/// the wire form varied as other encoders write it (fields in another order, a scalar given
/// twice, lists unpacked, unknown fields, a message given twice); and random requests for the
/// rules that read them. Each through `check::one_pass_is_the_tree`. `FUZZ_SEED` reproduces a
/// run.
#[test]
fn the_reply_writer_writes_generated_replies_as_the_tree_does() {
    use prost_reflect::{DynamicMessage, MessageDescriptor, ReflectMessage, Value};
    let seed = fuzz_seed();
    println!("generated replies: FUZZ_SEED={seed}");
    let mut rng = fastrand::Rng::with_seed(seed);
    const STRINGS: &[&str] = &[
        "",
        "x",
        "{}",
        "{\"content\":\"hi\"}",
        "[]",
        "not json",
        "<a href=\"x\">&amp;</a>",
        "tab\tnew\nline\u{0}\u{2}\u{1f}\u{7f}",
        "é中文😀\u{2028}\u{2029}",
        "\\\"quoted\\\"",
        "{\"a\":{\"b\":[1,2,{\"c\":null}]}}",
        " {} ",
    ];
    fn value(rng: &mut fastrand::Rng, kind: &Kind, depth: u32) -> Value {
        fn pick<T: Copy>(rng: &mut fastrand::Rng, values: &[T]) -> T {
            values[rng.usize(..values.len())]
        }
        match kind {
            Kind::Bool => Value::Bool(rng.bool()),
            Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
                let r = rng.i32(..);
                Value::I32(pick(rng, &[0, 1, -1, i32::MAX, i32::MIN, r]))
            }
            Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => {
                let r = rng.i64(..);
                Value::I64(pick(rng, &[0, -1, i64::MAX, i64::MIN, 1719800000123, r]))
            }
            Kind::Uint32 | Kind::Fixed32 => {
                let r = rng.u32(..);
                Value::U32(pick(rng, &[0, u32::MAX, r]))
            }
            Kind::Uint64 | Kind::Fixed64 => {
                let r = rng.u64(..);
                Value::U64(pick(rng, &[0, u64::MAX, r]))
            }
            Kind::Float => Value::F32(pick(rng, &[0.0, -0.0, 1.5, f32::MAX, f32::NAN, 1e-7])),
            Kind::Double => Value::F64(pick(rng, &[0.0, 0.1, 1e300, f64::INFINITY, -2.5])),
            Kind::String => Value::String(pick(rng, STRINGS).to_owned()),
            Kind::Bytes => {
                let n = rng.usize(..5);
                Value::Bytes(vec![rng.u8(..); n].into())
            }
            Kind::Enum(e) => {
                let numbers: Vec<i32> = e.values().map(|v| v.number()).collect();
                Value::EnumNumber(pick(rng, &numbers))
            }
            Kind::Message(m) => Value::Message(message(rng, m, depth + 1)),
        }
    }
    fn message(rng: &mut fastrand::Rng, desc: &MessageDescriptor, depth: u32) -> DynamicMessage {
        let mut m = DynamicMessage::new(desc.clone());
        for f in desc.fields() {
            if depth > 3 || rng.u8(..3) == 0 {
                continue;
            }
            let kind = f.kind();
            if f.is_map() {
                continue;
            }
            let v = if f.is_list() {
                Value::List(
                    (0..rng.usize(..4))
                        .map(|_| value(rng, &kind, depth))
                        .collect(),
                )
            } else {
                value(rng, &kind, depth)
            };
            m.set_field(&f, v);
        }
        m
    }
    /// The message's wire form, varied as other encoders may write it.
    fn wire(rng: &mut fastrand::Rng, m: &DynamicMessage) -> Vec<u8> {
        let mut parts: Vec<Vec<u8>> = Vec::new();
        for (f, v) in m.fields() {
            let mut one = DynamicMessage::new(m.descriptor());
            one.set_field(&f, v.clone());
            let bytes = one.encode_to_vec();
            match (v, rng.u8(..6)) {
                // A list unpacked, element by element.
                (Value::List(items), 0) => {
                    for item in items {
                        let mut one = DynamicMessage::new(m.descriptor());
                        one.set_field(&f, Value::List(vec![item.clone()]));
                        let mut b = one.encode_to_vec();
                        if !matches!(f.kind(), Kind::String | Kind::Bytes | Kind::Message(_)) {
                            // Re-key the packed single element as an unpacked one.
                            let mut buf = &b[..];
                            let _key = prost::encoding::decode_varint(&mut buf).unwrap();
                            let _len = prost::encoding::decode_varint(&mut buf).unwrap();
                            let wire = match f.kind() {
                                Kind::Double | Kind::Fixed64 | Kind::Sfixed64 => 1,
                                Kind::Float | Kind::Fixed32 | Kind::Sfixed32 => 5,
                                _ => 0,
                            };
                            let mut unpacked = Vec::new();
                            prost::encoding::encode_varint(
                                (u64::from(f.number()) << 3) | wire,
                                &mut unpacked,
                            );
                            unpacked.extend_from_slice(buf);
                            b = unpacked;
                        }
                        parts.push(b);
                    }
                }
                // A scalar given twice: the last one counts.
                (Value::String(_) | Value::I32(_) | Value::I64(_) | Value::Bool(_), 1) => {
                    let mut first = DynamicMessage::new(m.descriptor());
                    first.set_field(&f, value(rng, &f.kind(), 9));
                    parts.push(first.encode_to_vec());
                    parts.push(bytes);
                }
                // A message given twice: the tree merges the two, the one pass hands it back.
                (Value::Message(_), 2) => {
                    parts.push(bytes.clone());
                    parts.push(bytes);
                }
                _ => parts.push(bytes),
            }
        }
        if rng.u8(..4) == 0 {
            // Unknown fields of every plain wire type.
            let mut unknown = vec![0xf8, 0x07, 0x01]; // 127, varint
            unknown.extend_from_slice(&[0xf1, 0x07, 1, 2, 3, 4, 5, 6, 7, 8]); // 126, fixed64
            unknown.extend_from_slice(&[0xea, 0x07, 0x02, b'h', b'i']); // 125, bytes
            unknown.extend_from_slice(&[0xe5, 0x07, 1, 2, 3, 4]); // 124, fixed32
            parts.insert(rng.usize(..=parts.len()), unknown);
        }
        if rng.bool() {
            rng.shuffle(&mut parts);
        }
        parts.concat()
    }
    let (mut runs, mut one_pass) = (0, 0);
    for entry in &h().before {
        let command = entry.row.command;
        let resp = entry.response();
        for _ in 0..300 {
            let mut reply = message(&mut rng, &resp, 0);
            if let Some(rf) = &entry.rejection {
                // Mostly no rejection: the modify path is the one to prove.
                if rng.u8(..5) != 0 {
                    reply.clear_field(rf);
                }
            }
            let bytes = wire(&mut rng, &reply);
            let request = match rng.u8(..3) {
                0 => h().request(command).clone(),
                1 => DynamicMessage::new(entry.request()),
                _ => message(&mut rng, &entry.request(), 0),
            };
            let p = check::policy(rng.u8(..4));
            let took = check::one_pass_is_the_tree(entry, &bytes, target(entry, &request, &p));
            runs += 1;
            one_pass += usize::from(took);
        }
    }
    println!("generated replies: {one_pass} of {runs} written in one pass");
    assert!(
        one_pass * 10 >= runs * 9,
        "only {one_pass} of {runs} generated replies went one pass"
    );
}
