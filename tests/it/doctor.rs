//! `openim-callback-gateway doctor` (issue #22): OpenIM's real default `webhooks.yml`, an env file
//! of `IMENV_WEBHOOKS_*` lines, a crafted file for every check (its line and exit code), files
//! that do not parse, and `--probe` through a running gateway with and without its path secret.

use crate::support::process;
use crate::support::write_file as write;
use std::process::Command;

/// Runs `doctor` with `args`; returns the exit code and stdout + stderr.
fn doctor(args: &[&str]) -> (i32, String) {
    let out = Command::new(process::BIN)
        .arg("doctor")
        .args(args)
        .env_remove("OPENIM_GATEWAY_CONFIG")
        .output()
        .expect("the binary runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().expect("exited"), text)
}

const DEFAULT_YML: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/data/openim/webhooks.yml"
);

#[test]
fn openims_default_webhooks_yml_has_nothing_enabled_and_an_env_file_enables_commands() {
    let (code, text) = doctor(&["--openim", DEFAULT_YML]);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("error [nothing-enabled]"), "{text}");
    assert!(
        !text.contains("unknown-key"),
        "every default key is known: {text}"
    );

    let dir = tempfile::tempdir().unwrap();
    let env = write(
        dir.path(),
        "openim.env",
        "# openim-docker\nIMENV_WEBHOOKS_URL=http://openim-callback-gateway:10006/callbackExample\n\
         - IMENV_WEBHOOKS_BEFORECREATEGROUP_ENABLE=true\nexport IMENV_WEBHOOKS_AFTERSENDGROUPMSG_ENABLE=\"true\"\n\
         IMENV_WEBHOOKS_BEFOREGROUPONLINEPUSH_ENABLE=true\nMONGO_PASSWORD=ignored\n",
    );
    // Without the gateway's config, the embedded default's demo would answer: said first.
    let (code, text) = doctor(&["--openim", DEFAULT_YML, "--openim-env", &env]);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("error [demo-answers]"), "{text}");
    let gateway = write(
        dir.path(),
        "gateway.yaml",
        "upstreams: {default: {endpoints: ['http://127.0.0.1:1']}}\n",
    );
    let (code, text) = doctor(&[
        "--config",
        &gateway,
        "--openim",
        DEFAULT_YML,
        "--openim-env",
        &env,
    ]);
    // The defaults keep `failedContinue: true`, which OpenIM ignores: a warning, nothing worse.
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("warning [failed-continue] beforeCreateGroup"),
        "{text}"
    );
    assert!(
        text.contains("warning [failed-continue] beforeGroupOnlinePush"),
        "{text}"
    );
    assert!(!text.contains("error ["), "{text}");
    assert!(text.contains("0 error(s), 2 warning(s)"), "{text}");

    // The env file alone (OpenIM's defaults under it).
    let only = write(
        dir.path(),
        "only.env",
        "IMENV_WEBHOOKS_URL=http://gw:10006/cb\nIMENV_WEBHOOKS_AFTERQUITGROUP_ENABLE=true\n",
    );
    let (code, text) = doctor(&["--config", &gateway, "--openim-env", &only]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("0 error(s), 0 warning(s)"), "{text}");
}

#[test]
fn every_check_prints_its_line_and_sets_the_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    let gateway = write(
        dir.path(),
        "gateway.yaml",
        "upstreams: {default: {endpoints: ['http://127.0.0.1:1']}}\n\
         commands:\n  callbackAfterQuitGroupCommand: {ordered: true}\n  callbackBeforeAddBlackCommand: {enabled: false}\n",
    );
    let secret = write(
        dir.path(),
        "secret.yaml",
        "upstreams: {default: {endpoints: ['http://127.0.0.1:1']}}\nauth: {path_secrets: [s3cret]}\n",
    );
    let demo = write(dir.path(), "demo.yaml", "demo: true\n");
    let ok = "url: http://gw:10006/cb\nafterQuitGroup: {enable: true}\n";
    // (what, webhooks.yml, gateway config, the expected line, the exit code)
    let cases: &[(&str, &str, &str, &str, i32)] = &[
        (
            "fine",
            ok,
            &gateway,
            "0 error(s), 0 warning(s), 0 note(s)",
            0,
        ),
        (
            "no url",
            "afterQuitGroup: {enable: true}\n",
            &gateway,
            "error [url-missing] url",
            2,
        ),
        (
            "no scheme",
            "url: gw:10006/cb\nafterQuitGroup: {enable: true}\n",
            &gateway,
            "error [url-scheme] url: `gw:10006/cb` has no scheme",
            2,
        ),
        (
            "query",
            "url: http://gw/hook?token=abc\nafterQuitGroup: {enable: true}\n",
            &gateway,
            "error [url-query] url: the query string `?token=abc`",
            2,
        ),
        (
            "trailing slash",
            "url: http://gw:10006/cb/\nafterQuitGroup: {enable: true}\n",
            &gateway,
            "info [url-trailing-slash] url",
            0,
        ),
        (
            "path secret missing",
            ok,
            &secret,
            "error [url-path-secret] url",
            2,
        ),
        (
            "path secret given",
            "url: http://gw:10006/s3cret\nafterQuitGroup: {enable: true}\n",
            &secret,
            "0 error(s), 0 warning(s)",
            0,
        ),
        (
            "typo",
            "url: http://gw/cb\nafterQuitGroup: {enable: true}\nbeforeCreateGroupp: {enable: true}\n",
            &gateway,
            "warning [unknown-key] beforeCreateGroupp: OpenIM does not know this key (did you mean `beforeCreateGroup`?)",
            1,
        ),
        (
            "disabled in OpenIM",
            "url: http://gw/cb\nbeforeCreateGroup: {enable: true}\n",
            &gateway,
            "warning [disabled-in-openim] afterQuitGroup: the gateway routes callbackAfterQuitGroupCommand",
            1,
        ),
        (
            "disabled in the gateway",
            "url: http://gw/cb\nafterQuitGroup: {enable: true}\nbeforeAddBlack: {enable: true}\n",
            &gateway,
            "warning [disabled-in-gateway] beforeAddBlack",
            1,
        ),
        (
            "short timeout",
            "url: http://gw/cb\nafterQuitGroup: {enable: true}\nbeforeCreateGroup: {enable: true, timeout: 2}\n",
            &gateway,
            "error [timeout-shorter-than-gateway] beforeCreateGroup: OpenIM gives up after 2s",
            2,
        ),
        (
            "capped timeout",
            "url: http://gw/cb\nafterQuitGroup: {enable: true, timeout: 30}\n",
            &gateway,
            "info [timeout-capped] afterQuitGroup: timeout 30 means 15s",
            0,
        ),
        (
            "long timeout",
            "url: http://gw/cb\nafterQuitGroup: {enable: true}\nbeforeCreateGroup: {enable: true, timeout: 15}\n",
            &gateway,
            "info [timeout-longer-than-needed] beforeCreateGroup",
            0,
        ),
        (
            "failedContinue",
            "url: http://gw/cb\nafterQuitGroup: {enable: true}\nbeforeUserRegister: {enable: true, timeout: 5, failedContinue: true}\n",
            &gateway,
            "warning [failed-continue] beforeUserRegister: failedContinue has been ignored by OpenIM since v3.7 (issue #3808)",
            1,
        ),
        (
            "attentionIds on groups",
            "url: http://gw/cb\nafterQuitGroup: {enable: true}\nafterSendGroupMsg: {enable: true, attentionIds: [g1]}\n",
            &gateway,
            "error [attention-ids] afterSendGroupMsg: attentionIds is compared with the message's recvID",
            2,
        ),
        (
            "attentionIds on single",
            "url: http://gw/cb\nafterQuitGroup: {enable: true}\nafterSendSingleMsg: {enable: true, attentionIds: [bot]}\n",
            &gateway,
            "warning [attention-ids] afterSendSingleMsg",
            1,
        ),
        (
            "online push without group push",
            "url: http://gw/cb\nafterQuitGroup: {enable: true}\nbeforeOnlinePush: {enable: true}\n",
            &gateway,
            "warning [group-push] beforeGroupOnlinePush",
            1,
        ),
        (
            "online flood",
            "url: http://gw/cb\nafterQuitGroup: {enable: true}\nafterUserOffline: {enable: true}\n",
            &gateway,
            "warning [online-flood] afterUserOffline",
            1,
        ),
        (
            "never sent",
            "url: http://gw/cb\nafterQuitGroup: {enable: true}\nafterGroupMsgRevoke: {enable: true}\n",
            &gateway,
            "info [never-sent] afterGroupMsgRevoke",
            0,
        ),
        (
            "kick-off never sent",
            "url: http://gw/cb\nafterQuitGroup: {enable: true}\nafterUserKickOff: {enable: true}\n",
            &gateway,
            "info [never-sent] afterUserKickOff",
            0,
        ),
        (
            "nothing enabled",
            "url: http://gw/cb\n",
            &gateway,
            "error [nothing-enabled] webhooks",
            2,
        ),
        (
            "the demo answers",
            ok,
            &demo,
            "error [demo-answers] upstreams",
            2,
        ),
    ];
    for (i, (what, yml, config, line, exit)) in cases.iter().enumerate() {
        let file = write(dir.path(), &format!("case{i}.yml"), yml);
        let (code, text) = doctor(&["--config", config, "--openim", &file]);
        assert!(text.contains(line), "{what}: expected `{line}` in:\n{text}");
        assert_eq!(code, *exit, "{what}:\n{text}");
    }
}

#[test]
fn files_that_do_not_parse_get_one_message_naming_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("yml", "url: [unclosed\n", "not OpenIM's webhooks.yml"),
        (
            "yml",
            "beforeCreateGroup: {enable: yes please}\n",
            "beforeCreateGroup.enable: expected true or false",
        ),
        (
            "yml",
            "beforeCreateGroup: 5\n",
            "beforeCreateGroup: expected a mapping",
        ),
        (
            "env",
            "IMENV_WEBHOOKS_URL=http://gw/cb\nthis is not a variable\n",
            ":2: `this is not a variable` is not a VARIABLE=value line",
        ),
        (
            "env",
            "IMENV_WEBHOOKS_BEFORECREATEGROUP_TIMEOUT=soon\n",
            ":1: IMENV_WEBHOOKS_BEFORECREATEGROUP_TIMEOUT: expected whole seconds",
        ),
    ];
    for (i, (kind, text, expected)) in cases.iter().enumerate() {
        let file = write(dir.path(), &format!("bad{i}.{kind}"), text);
        let flag = if *kind == "yml" {
            "--openim"
        } else {
            "--openim-env"
        };
        let (code, out) = doctor(&[flag, &file]);
        assert_eq!(code, 2, "{out}");
        assert!(out.contains(&file), "names the file: {out}");
        assert!(out.contains(expected), "expected `{expected}` in: {out}");
        assert_eq!(out.lines().count(), 1, "one message: {out}");
        assert!(!out.contains("panicked"), "{out}");
    }
    let (code, out) = doctor(&["--openim", "/nonexistent/webhooks.yml"]);
    assert_eq!(code, 2);
    assert!(out.contains("/nonexistent/webhooks.yml"), "{out}");
    let (code, out) = doctor(&[]);
    assert_eq!(code, 2);
    assert!(out.contains("--openim"), "says what to give: {out}");
}

#[test]
fn probe_reaches_the_gateway_through_openims_url_and_its_path_secret() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        dir.path(),
        "gateway.yaml",
        "listen: 127.0.0.1:0\nupstreams: {default: {endpoints: ['http://127.0.0.1:1']}}\n\
         auth: {path_secrets: [s3cret]}\n",
    );
    let gw = process::spawn(&["--config", &cfg], &dir.path().join("spool"));
    let (code, text) = doctor(&[
        "--config",
        &cfg,
        "--probe",
        &format!("http://{}/s3cret", gw.addr),
    ]);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("info [probe]") && text.contains("reached this gateway"),
        "{text}"
    );
    let (code, text) = doctor(&[
        "--config",
        &cfg,
        "--probe",
        &format!("http://{}/wrong", gw.addr),
    ]);
    assert_eq!(code, 2, "{text}");
    assert!(
        text.contains("error [probe]") && text.contains("refused with HTTP"),
        "{text}"
    );
    // The url read from OpenIM's file, when --probe has no value.
    let yml = write(
        dir.path(),
        "webhooks.yml",
        &format!(
            "url: http://{}/s3cret\nafterQuitGroup: {{enable: true}}\n",
            gw.addr
        ),
    );
    let (code, text) = doctor(&["--config", &cfg, "--openim", &yml, "--probe"]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("reached this gateway"), "{text}");
    assert!(
        gw.log_text().contains("doctor probe reached the gateway"),
        "{}",
        gw.log_text()
    );
    drop(gw);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (code, text) = doctor(&["--probe", &format!("http://127.0.0.1:{port}/cb")]);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("cannot reach it"), "{text}");
}
