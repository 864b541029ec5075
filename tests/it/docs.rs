//! The documentation is tested like the code.
//!
//! - `docs/commands.md` is what the catalogue renders (`UPDATE_DOCS=1 cargo test --test it docs::`
//!   rewrites it); every `webhooks.yml` key in the catalogue is OpenIM's.
//! - No markdown link leaves the repository or points at a missing file or heading, and the
//!   README stays a page a newcomer reads to the end (at most 350 lines).
//! - Under `--ignored`, against the release binary (`.ci/run`: `cargo test --release --test it
//!   -- --ignored docs::`): every block of the README marked `sh serve` or `sh runnable` runs as printed,
//!   and the output a runnable block shows is compared byte for byte; the Python and Node servers
//!   of `docs/hook-service.md` are copied out as printed, installed from PyPI and npm, started
//!   behind the gateway and sent a real OpenIM payload.
//!
//! Runnable blocks: `$ ` starts a command (a line ending in `\` or `|` continues it), the lines up
//! to the next command, comment (`# `) or blank line are its expected stdout, and every command
//! must exit 0. A command shown without output only has to succeed. A `sh serve` block starts
//! each line in the background and waits for its `listening` line; what a `## ` section started
//! is stopped when the next section begins.

use crate::support::process;
use openim_callback_gateway::catalog::{Catalog, Phase, ROWS, Rule};
use std::collections::{BTreeSet, HashMap};
use std::io::{BufRead, BufReader};
use std::path::{Component, Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
}

// ---------------------------------------------------------------------------------------------
// docs/commands.md, generated from the catalogue

/// The six `webhooks.yml` keys that are not the command's name with `callback`/`Command` cut and
/// the first letter lowered (OpenIM's `pkg/common/config/config.go` against
/// `pkg/callbackstruct/constant.go`).
const KEYS_UNLIKE_THEIR_COMMAND: [(&str, &str); 6] = [
    ("afterRevokeMsg", "callbackBeforeAfterMsgCommand"),
    (
        "beforeMemberJoinGroup",
        "callbackBeforeMembersJoinGroupCommand",
    ),
    ("afterKickGroupMember", "callbackAfterKickGroupCommand"),
    ("afterDismissGroup", "callbackAfterDisMissGroupCommand"),
    ("beforeApplyJoinGroup", "callbackBeforeJoinGroupCommand"),
    (
        "beforeInviteUserToGroup",
        "callbackBeforeInviteJoinGroupCommand",
    ),
];

fn key_from_command(command: &str) -> String {
    let middle = command
        .strip_prefix("callback")
        .and_then(|c| c.strip_suffix("Command"))
        .unwrap_or(command);
    let mut chars = middle.chars();
    chars.next().map_or_else(String::new, |first| {
        first.to_lowercase().chain(chars).collect()
    })
}

fn code_list(fields: &[&str]) -> String {
    fields
        .iter()
        .map(|f| format!("`{f}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn rule_text(rule: &Rule) -> String {
    match rule {
        Rule::EchoFromRequest(fields) => format!(
            "{} echoed from the request when the reply leaves them unset, on every continue",
            code_list(fields)
        ),
        Rule::OnlyIfInRequest(fields) => format!(
            "{} in a reply dropped when the request's was `null`",
            code_list(fields)
        ),
        Rule::DropUnlessAllowed(field) => {
            format!("`{field}` override dropped unless `allow_offline_push_info`")
        }
        Rule::EntriesRequire { list, key } => format!("`{list}` entries without `{key}` dropped"),
        Rule::JsonObjectString(field) => {
            format!("`{field}` dropped unless it is a JSON object string")
        }
    }
}

const COMMANDS_HEAD: &str = r#"# The 52 commands

<!-- Generated from the catalogue (src/catalog.rs) and the compiled contract by tests/it/docs.rs.
     Do not edit: change the catalogue, then run `UPDATE_DOCS=1 cargo test --test it docs::`. -->

OpenIM sends 23 **before** callbacks, synchronous, whose reply may reject or modify the operation, and 29
**after** callbacks, notifications whose reply is ignored. Each is enabled by one key of OpenIM's
`config/webhooks.yml` (`beforeCreateGroup: {enable: true, timeout: 5}`), or in Docker by the variables
`IMENV_WEBHOOKS_<KEY>_ENABLE` and `IMENV_WEBHOOKS_<KEY>_TIMEOUT` with the key upper-cased
([`openim-docker.md`](openim-docker.md)). The request goes to `<url>/<command>`, and the gateway calls the RPC.

**Six keys are not named like their command** (in bold below): `afterRevokeMsg` enables
`callbackBeforeAfterMsgCommand`, `beforeMemberJoinGroup` enables `callbackBeforeMembersJoinGroupCommand`,
`beforeApplyJoinGroup` enables `callbackBeforeJoinGroupCommand`, `beforeInviteUserToGroup` enables
`callbackBeforeInviteJoinGroupCommand`, `afterKickGroupMember` enables `callbackAfterKickGroupCommand`, and
`afterDismissGroup` enables `callbackAfterDisMissGroupCommand` (the case differs). The key `afterGroupMsgRevoke`
enables nothing, and `callbackAfterUserKickOffCommand` is never sent by OpenIM.

"What a reply can change" lists the JSON keys of each `<Rpc>Response` besides `rejection`; "handled for you" the
reply safety rules the gateway applies (see [OpenIM traps](#openim-traps-the-gateway-removes)).

| # | `webhooks.yml` key | command | B/A | RPC | what a reply can change | handled for you |
|---|---|---|---|---|---|---|
"#;

const COMMANDS_TAIL: &str = r#"
## OpenIM traps the gateway removes

- **Replies OpenIM crashes or misbehaves on:**
  - SetGroupInfo and SetGroupInfoEx copy `groupID` (and more) from every reply, so an empty reply would fail the
    operation or silently drop the user's change. The gateway echoes those fields from the request on
    **every** continue answer: a service reply, `UNIMPLEMENTED`, a disabled command, a failure-policy continue,
    and even bad input.
  - UpdateUserInfoEx crashes when a reply sets a field that was `null` in the request. MemberJoinGroup crashes
    on a `memberCallbackList` entry without `userID`. MsgModify crashes on an `offlinePushInfo` override when the
    message has none, and its request does not say whether it has one. MsgModify also fails the send when
    `content` is not a JSON object string.
  - The gateway drops each of these with a warning that names the field. The MsgModify `offlinePushInfo` drop
    can be switched off with `allow_offline_push_info: true`.
- **Envelope format:** a number sent as a string (`"nextCode": "0"`, as OpenIM's docs show) fails the
  operation. The gateway always writes numbers, and it rejects only as `actionCode 0, nextCode 1, errCode > 0`.
- **Liberal input:**
  - Wrapper fields are read both as bare values and as `{"value": x}`, the form the docs show.
  - 64-bit numbers are read as numbers or as strings.
  - Keys are matched exactly, with a case-insensitive fallback, as Go's decoder does.
  - Unknown keys are ignored, counted per command and key, and logged once.
  - `null` means absent, and Go's trailing newline, HTML escapes and control characters are all accepted.
- **Wire names that surprise:** `Seqs` (capital S) in `callbackAfterSingleMsgReadCommand`; `blackUserID` carries
  the responder and `HandleResult`/`HandleMsg` are capitalised in the AddFriendAgree pair; `groupType` is a
  string holding `"\u0002"` in `callbackAfterDisMissGroupCommand` and `callbackBeforeJoinGroupCommand`;
  `?key=` (on `callbackAfterSendSingleMsgCommand`, `callbackAfterSendGroupMsgCommand`,
  `callbackAfterMsgSaveDBCommand`) is passed on as `openim-key` metadata.
- **Bad input** (not JSON, wrong types, too large) gets a log line with the operationID and the command's
  failure-policy envelope. An **unknown command** gets "continue", a warning and a counter. Nothing panics, and
  the connection stays usable.
- **A timeout is a failure:** OpenIM's `failedContinue` setting is dead code, so any timeout or error fails a
  before-operation. The gateway answers within its own per-command deadline (3 s by default, under OpenIM's
  5 s), and the failure policy decides what OpenIM is told.
"#;

fn render_commands() -> String {
    let catalog = Catalog::contract().expect("the compiled contract resolves");
    let mut out = String::from(COMMANDS_HEAD);
    for (i, row) in ROWS.iter().enumerate() {
        let entry = catalog.get(row.command).expect("every row resolves");
        let key = if key_from_command(row.command) == row.key {
            format!("`{}`", row.key)
        } else {
            format!("**`{}`**", row.key)
        };
        let (phase, change) = match entry.phase {
            Phase::Before => {
                let fields: Vec<String> = entry
                    .response()
                    .fields()
                    .filter(|f| f.name() != "rejection")
                    .map(|f| format!("`{}`", f.json_name()))
                    .collect();
                let change = if fields.is_empty() {
                    "reject only".to_owned()
                } else {
                    format!("reject; {}", fields.join(", "))
                };
                ("before", change)
            }
            Phase::After => ("after", "— (notification)".to_owned()),
        };
        let rules: Vec<String> = row.rules.iter().map(rule_text).collect();
        out.push_str(&format!(
            "| {} | {key} | `{}` | {phase} | `{}.{}` | {change} | {} |\n",
            i + 1,
            row.command,
            row.service,
            row.rpc,
            rules.join("; ")
        ));
    }
    out.push_str(COMMANDS_TAIL);
    out
}

#[test]
fn commands_md_is_what_the_catalogue_renders() {
    let want = render_commands();
    let path = root().join("docs/commands.md");
    if std::env::var_os("UPDATE_DOCS").is_some_and(|v| v == "1") {
        std::fs::write(&path, &want).unwrap();
        return;
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        have == want,
        "docs/commands.md differs from what the catalogue renders: run `UPDATE_DOCS=1 cargo test --test it docs::` and commit it"
    );
}

#[test]
fn every_webhooks_key_is_openims() {
    let keys: BTreeSet<&str> = ROWS.iter().map(|r| r.key).collect();
    assert_eq!(keys.len(), 52, "52 distinct keys, one per command");
    let unlike: Vec<(&str, &str)> = ROWS
        .iter()
        .filter(|r| key_from_command(r.command) != r.key)
        .map(|r| (r.key, r.command))
        .collect();
    let mut want = KEYS_UNLIKE_THEIR_COMMAND.to_vec();
    want.sort_unstable();
    let mut got = unlike;
    got.sort_unstable();
    assert_eq!(got, want);
}

// ---------------------------------------------------------------------------------------------
// Links, and the README's length

/// Folders that hold no documentation of ours (build output, installed packages, caches).
const SKIP: [&str; 11] = [
    ".git",
    "target",
    "node_modules",
    ".venv",
    ".tools",
    "corpus",
    "artifacts",
    ".bin",
    "gen",
    "data",
    "seeds",
];

fn markdown_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().map_while(Result::ok) {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if path.is_dir() {
            if !SKIP.contains(&name.as_str()) || path.starts_with(root().join("tests/data")) {
                markdown_files(&path, out);
            }
        } else if name.ends_with(".md") {
            out.push(path);
        }
    }
}

/// GitHub's anchor of a heading: lower case, punctuation dropped, spaces as hyphens.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// The text outside fenced code blocks, and the anchors of its headings.
fn prose_and_anchors(text: &str) -> (Vec<String>, BTreeSet<String>) {
    let mut prose = Vec::new();
    let mut anchors = BTreeSet::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        if let Some(h) = line.strip_prefix('#') {
            anchors.insert(slug(h.trim_start_matches('#')));
        }
        prose.push(line.to_owned());
    }
    (prose, anchors)
}

/// The targets of `[text](target)` links in one line.
fn link_targets(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = line;
    while let Some(at) = rest.find("](") {
        let after = &rest[at + 2..];
        let end = after.find(')').unwrap_or(after.len());
        let target = after[..end].split_whitespace().next().unwrap_or("");
        out.push(target.to_owned());
        rest = &after[end..];
    }
    out
}

/// `a/b/../c` without touching the file system; `None` when it climbs above the start.
fn normalise(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    Some(out)
}

/// Files another change adds, linked already: `docs/spool.md` comes with the spool's work (#19).
/// Remove an entry when its file lands (the test says so).
const PENDING: [&str; 0] = [];

#[test]
fn no_link_leaves_the_repository_or_points_at_nothing() {
    let root = root();
    let mut files = Vec::new();
    markdown_files(&root, &mut files);
    files.sort();
    assert!(files.len() > 10, "found the markdown files: {files:?}");
    let mut anchors: HashMap<PathBuf, BTreeSet<String>> = HashMap::new();
    let mut prose: HashMap<PathBuf, Vec<String>> = HashMap::new();
    for f in &files {
        let rel = f.strip_prefix(&root).unwrap().to_path_buf();
        let (p, a) = prose_and_anchors(&std::fs::read_to_string(f).unwrap());
        anchors.insert(rel.clone(), a);
        prose.insert(rel, p);
    }
    let mut problems = Vec::new();
    let mut checked = 0;
    for (rel, lines) in &prose {
        let dir = rel.parent().unwrap_or(Path::new(""));
        for (n, line) in lines.iter().enumerate() {
            let mut targets = link_targets(line);
            // Reference definitions: `[name]: target`.
            if let Some(def) = line.trim_start().strip_prefix('[')
                && let Some((_, target)) = def.split_once("]: ")
            {
                targets.push(target.trim().to_owned());
            }
            // Paths in code spans that climb out of their folder name files too (`../shared/x`).
            for (i, span) in line.split('`').enumerate() {
                if i % 2 == 1 && span.starts_with("../") && !span.contains([' ', '*']) {
                    targets.push(span.to_owned());
                }
            }
            for target in targets {
                if target.is_empty()
                    || target.contains("://")
                    || target.starts_with("mailto:")
                    || target.starts_with('<')
                {
                    continue;
                }
                checked += 1;
                let (path, anchor) = target.split_once('#').unwrap_or((&target, ""));
                let where_ = format!("{}:{}: {target}", rel.display(), n + 1);
                let resolved = if path.is_empty() {
                    Some(rel.clone())
                } else if path.starts_with('/') {
                    problems.push(format!("{where_}: absolute path"));
                    continue;
                } else {
                    normalise(&dir.join(path))
                };
                let Some(resolved) = resolved else {
                    problems.push(format!("{where_}: leaves the repository"));
                    continue;
                };
                if !root.join(&resolved).exists() {
                    if PENDING.iter().any(|p| resolved == Path::new(p)) {
                        continue;
                    }
                    problems.push(format!("{where_}: no such file"));
                    continue;
                }
                if !anchor.is_empty()
                    && let Some(known) = anchors.get(&resolved)
                    && !known.contains(anchor)
                {
                    problems.push(format!("{where_}: no heading #{anchor}"));
                }
            }
        }
    }
    assert!(checked > 50, "checked {checked} links");
    for p in PENDING {
        assert!(
            !root.join(p).exists(),
            "{p} exists now: remove it from PENDING in tests/it/docs.rs"
        );
    }
    problems.sort();
    assert!(
        problems.is_empty(),
        "broken links:\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_readme_is_a_page_a_newcomer_reads_to_the_end() {
    let readme = read("README.md");
    let lines = readme.lines().count();
    assert!(lines <= 350, "README.md has {lines} lines; at most 350");
    // The README's Python server is the one CI runs as printed from docs/hook-service.md.
    for block in blocks(&read("docs/hook-service.md")) {
        if block.info.contains("test=python") && !block.info.contains("serve") {
            assert!(
                readme.contains(&block.body),
                "README.md's Python snippet differs from docs/hook-service.md's:\n{}",
                block.body
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Blocks run as printed (release binary, `--ignored`)

/// A fenced block: its info string, its body, and the `## ` section it is in.
struct Block {
    info: String,
    body: String,
    section: String,
}

fn blocks(text: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut section = String::new();
    let mut open: Option<(String, String)> = None;
    for line in text.lines() {
        match &mut open {
            None => {
                if let Some(h) = line.strip_prefix("## ") {
                    section = h.to_owned();
                } else if let Some(info) = line.strip_prefix("```") {
                    open = Some((info.trim().to_owned(), String::new()));
                }
            }
            Some((info, body)) => {
                if line.trim_start().starts_with("```") {
                    out.push(Block {
                        info: std::mem::take(info),
                        body: std::mem::take(body),
                        section: section.clone(),
                    });
                    open = None;
                } else {
                    body.push_str(line);
                    body.push('\n');
                }
            }
        }
    }
    out
}

/// The release binary's folder first on the `PATH`, as after `cargo build --release`.
fn path_with_binary() -> String {
    let bin_dir = Path::new(process::BIN).parent().unwrap().to_path_buf();
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs = vec![bin_dir];
    dirs.extend(std::env::split_paths(&path));
    std::env::join_paths(dirs)
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

fn shell(line: &str, dir: &Path) -> Command {
    let mut cmd = Command::new("bash");
    // The environment of a user's shell: without what cargo sets for a test process (`CARGO_PKG_*`,
    // `CARGO_MANIFEST_DIR`, `OUT_DIR`, …), which would also make the README's `cargo run` see a
    // different build environment and rebuild.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        let cargo_set =
            (key.starts_with("CARGO") && key != "CARGO_HOME" && key != "CARGO_TARGET_DIR")
                || key == "OUT_DIR"
                || key.starts_with("RUST_TEST")
                || key.starts_with("__CARGO");
        if cargo_set {
            cmd.env_remove(key.as_ref());
        }
    }
    cmd.args(["-o", "pipefail", "-c", line])
        .current_dir(dir)
        .env("PATH", path_with_binary())
        .env("NO_COLOR", "1")
        .env("CARGO_TERM_COLOR", "never");
    cmd
}

/// A background process of a `serve` block, in its own process group (so that `cargo run`'s
/// child goes too), stopped on drop.
struct Served {
    child: Child,
    line: String,
    output: Arc<Mutex<Vec<String>>>,
}

impl Drop for Served {
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-TERM", "--", &group]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline
            && Command::new("kill")
                .args(["-0", "--", &group])
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.child.wait();
    }
}

/// Starts `line` as printed and waits (bounded: a first start may compile or install) for a
/// line containing `listening` on its stdout or stderr.
fn serve(line: &str, dir: &Path) -> Served {
    use std::os::unix::process::CommandExt as _;
    let mut child = shell(&format!("exec {line}"), dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("start `{line}`: {e}"));
    let output = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let streams: Vec<Box<dyn std::io::Read + Send>> = vec![
        Box::new(child.stdout.take().unwrap()),
        Box::new(child.stderr.take().unwrap()),
    ];
    for stream in streams {
        let (sink, tx) = (output.clone(), tx.clone());
        std::thread::spawn(move || {
            for l in BufReader::new(stream).lines().map_while(Result::ok) {
                if l.contains("listening") {
                    let _ = tx.send(());
                }
                sink.lock().unwrap().push(l);
            }
        });
    }
    let mut served = Served {
        child,
        line: line.to_owned(),
        output,
    };
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        if rx.recv_timeout(Duration::from_millis(200)).is_ok() {
            break;
        }
        let exited = served.child.try_wait().unwrap();
        assert!(
            exited.is_none() && Instant::now() < deadline,
            "`{}` {} before printing a `listening` line:\n{}",
            served.line,
            exited.map_or("took 900 s".to_owned(), |s| format!("exited ({s})")),
            served.output.lock().unwrap().join("\n")
        );
    }
    served
}

/// One command of a runnable block and the stdout it shows.
struct Shown {
    command: String,
    output: String,
}

fn shown_commands(body: &str) -> Vec<Shown> {
    let mut out: Vec<Shown> = Vec::new();
    let mut continuing = false;
    for line in body.lines() {
        if continuing {
            let last = out.last_mut().unwrap();
            last.command.push('\n');
            last.command.push_str(line);
            continuing = line.ends_with('\\') || line.ends_with('|');
        } else if let Some(cmd) = line.strip_prefix("$ ") {
            out.push(Shown {
                command: cmd.to_owned(),
                output: String::new(),
            });
            continuing = cmd.ends_with('\\') || cmd.ends_with('|');
        } else if line.is_empty() || line.starts_with("# ") {
            continue;
        } else {
            let last = out.last_mut().expect("output follows a `$ ` command");
            last.output.push_str(line);
            last.output.push('\n');
        }
    }
    out
}

fn run_shown(shown: &Shown, dir: &Path) {
    let out = shell(&shown.command, dir)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "`{}` exited with {}:\n{stdout}\n{}",
        shown.command,
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    if shown.output.is_empty() {
        return;
    }
    // curl prints a body without a final newline; the README shows it on a line of its own.
    let same = stdout == shown.output || format!("{stdout}\n") == shown.output;
    assert!(
        same,
        "`{}`:\nthe README shows\n{}\nit printed\n{stdout}",
        shown.command, shown.output
    );
}

#[test]
#[ignore = "runs the README's commands with the release binary; run by .ci/run"]
fn the_readmes_commands_work_as_printed() {
    let root = root();
    let readme = read("README.md");
    let mut served: Vec<Served> = Vec::new();
    let mut section = String::new();
    let (mut started, mut ran) = (0, 0);
    for block in blocks(&readme) {
        let runnable = block.info == "sh runnable";
        let serving = block.info == "sh serve";
        if !runnable && !serving {
            continue;
        }
        if block.section != section {
            // A new `## ` section: what the previous one started stops (ports are reused).
            while let Some(s) = served.pop() {
                drop(s);
            }
            section = block.section.clone();
        }
        if serving {
            for line in block.body.lines().filter(|l| !l.trim().is_empty()) {
                served.push(serve(line.trim(), &root));
                started += 1;
            }
        } else {
            for shown in shown_commands(&block.body) {
                run_shown(&shown, &root);
                ran += 1;
            }
        }
    }
    drop(served);
    assert!(started >= 3 && ran >= 7, "started {started}, ran {ran}");
}

/// Copies the blocks of `docs/hook-service.md` marked `test=<lang>` into an empty folder as
/// printed, runs the setup commands, starts the server behind the release gateway, and checks
/// a rejection and an allow with real OpenIM bodies.
fn hook_service_as_printed(lang: &str) {
    let dir = tempfile::tempdir().unwrap();
    let marker = format!("test={lang}");
    let mut server = None;
    for block in blocks(&read("docs/hook-service.md")) {
        let words: Vec<&str> = block.info.split_whitespace().collect();
        if !words.contains(&marker.as_str()) {
            continue;
        }
        if let Some(file) = words.iter().find_map(|w| w.strip_prefix("file=")) {
            std::fs::write(dir.path().join(file), &block.body).unwrap();
        } else if words.contains(&"serve") {
            server = Some(block.body.trim().to_owned());
        } else {
            for line in block.body.lines().filter(|l| !l.trim().is_empty()) {
                let status = shell(line, dir.path())
                    .stdin(Stdio::null())
                    .status()
                    .unwrap();
                assert!(status.success(), "`{line}` failed: {status}");
            }
        }
    }
    let line = server.expect("a `serve` block");
    let port = line
        .split_whitespace()
        .last()
        .expect("the serve line ends with the port");
    let _service = serve(&line, dir.path());
    let spool = tempfile::tempdir().unwrap();
    let upstream = format!("http://127.0.0.1:{port}");
    let gateway = process::spawn(
        &["--listen", "127.0.0.1:0", "--upstream", &upstream],
        spool.path(),
    );
    let mut conn = process::connect(&gateway.addr);
    let path = "/callbackExample/callbackBeforeCreateGroupCommand";

    let real =
        std::fs::read(root().join("tests/data/payloads/callbackBeforeCreateGroupCommand.json"))
            .unwrap();
    let (status, allowed) = process::post(&mut conn, path, &real);
    assert_eq!(status, 200);
    assert_eq!(allowed["nextCode"], 0, "{allowed}");
    assert_eq!(allowed["errCode"], 0, "{allowed}");

    let seed = read("tests/data/seeds/callbackBeforeCreateGroupCommand.json")
        .replace("\"MyGroup\"", "\"Spam deals\"");
    let (status, rejected) = process::post(&mut conn, path, seed.as_bytes());
    assert_eq!(status, 200);
    assert_eq!(
        rejected,
        serde_json::json!({"actionCode": 0, "errCode": 20001, "errMsg": "group name contains a blocked word", "errDlt": "spam", "nextCode": 1})
    );

    // A command the server left out answers UNIMPLEMENTED: OpenIM continues.
    let other =
        std::fs::read(root().join("tests/data/payloads/callbackBeforeAddFriendCommand.json"))
            .unwrap();
    let (_, continued) = process::post(
        &mut conn,
        "/callbackExample/callbackBeforeAddFriendCommand",
        &other,
    );
    assert_eq!(continued["nextCode"], 0, "{continued}");
}

#[test]
#[ignore = "needs Python 3.11 and PyPI; run by .ci/run"]
fn hook_service_python_as_printed() {
    hook_service_as_printed("python");
}

#[test]
#[ignore = "needs Node 20 and npm; run by .ci/run"]
fn hook_service_node_as_printed() {
    hook_service_as_printed("node");
}

#[test]
fn the_compose_config_passes_check() {
    let spool = tempfile::tempdir().unwrap();
    let out = Command::new(process::BIN)
        .args(["--config", "deploy/compose/gateway.yaml", "check"])
        .current_dir(root())
        .env("OPENIM_GATEWAY_SPOOL__DIR", spool.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let effective = String::from_utf8_lossy(&out.stdout);
    assert!(effective.contains("0.0.0.0:10006"), "{effective}");
    assert!(effective.contains("im-hooks:50051"), "{effective}");
}
