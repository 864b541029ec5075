#!/usr/bin/env bash
# A/B of gateway binaries in one run, interleaved: what one change buys (issue #12: "record each
# change's before/after in the same run"). Each run starts the binary fresh in front of the
# trivial upstream (bench/.bin/upstream, built by bench/run.sh), warms up 1 s, then runs wrk and
# reads the gateway's CPU from /proc.
#
#   bash bench/ab.sh before=/tmp/gw-old after=target/release/openim-callback-gateway
#   ROUNDS=5 SECONDS_PER_RUN=4 CONC=1 bash bench/ab.sh a=BIN b=BIN
#   MODE=spool SPOOL_DIR=/dev/shm/ab bash bench/ab.sh a=BIN b=BIN   # spooled AfterQuitGroup
#   LOG_FILTER=info bash bench/ab.sh a=BIN b=BIN   # with the per-callback log line (default warn)
#   REPLY=modify bash bench/ab.sh a=BIN b=BIN   # the upstream answers a modify (default empty)
#
# MODE=before (default): callbackBeforeCreateGroupCommand, delivery to the upstream; REPLY=modify
# makes the upstream answer it with the sample reply (three override fields) instead of an empty one.
# MODE=spool: callbackAfterQuitGroupCommand with delivery: spool (SPOOL_DIR, default a temporary
# directory; /dev/shm leaves the disk's sync latency out), CPU per event including its delivery:
# after the load the run waits until the upstream has counted every acknowledged event (at most
# 60 s), and its CPU is read then.
# Prints one line per run and the medians per binary.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
rounds=${ROUNDS:-3}
secs=${SECONDS_PER_RUN:-4}
conc=${CONC:-16}
mode=${MODE:-before}
log_filter=${LOG_FILTER:-warn}
reply=${REPLY:-empty}
(($#)) || { sed -n '2,20p' "$0" >&2; exit 2; }
[[ -x $here/.bin/upstream ]] || { echo "bench/ab.sh: run bash bench/run.sh --quick once to build bench/.bin" >&2; exit 1; }
command -v wrk >/dev/null || { echo "bench/ab.sh: wrk is needed (apt-get install wrk)" >&2; exit 1; }

tmp=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$tmp"; }
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

case $mode in
  before) cmd=callbackBeforeCreateGroupCommand ;;
  spool) cmd=callbackAfterQuitGroupCommand ;;
  *) echo "bench/ab.sh: MODE is before or spool" >&2; exit 2 ;;
esac
python3 - "$here/../../shared/openim/payloads/$cmd.json" "$tmp/body.json" <<'PY'
import json, sys
body = json.load(open(sys.argv[1]))
open(sys.argv[2], "w").write(json.dumps(body, separators=(",", ":"), ensure_ascii=False) + "\n")
PY
up=$(port)
stats=$(port)
# Only a modify needs the flag: an upstream built before it keeps working for the default.
up_flags=()
[[ $reply == empty ]] || up_flags=(-reply "$reply")
"$here/.bin/upstream" -addr "127.0.0.1:$up" -stats "127.0.0.1:$stats" "${up_flags[@]}" >"$tmp/upstream.log" 2>&1 &
pids+=($!)
gw=$(port)
url=http://127.0.0.1:$gw/$cmd

delivered() { curl -sf "http://127.0.0.1:$stats/count" | python3 -c 'import json,sys; print(json.load(sys.stdin)["after"])'; }

run() { # label binary
  local label=$1 bin=$2 spool=${SPOOL_DIR:-$tmp/spool}
  rm -rf "$spool" && mkdir -p "$spool"
  cat >"$tmp/gateway.yaml" <<EOF
listen: 127.0.0.1:$gw
log: {filter: $log_filter}
upstreams: {default: {endpoints: ['http://127.0.0.1:$up']}}
spool: {dir: '$spool'}
commands: {callbackAfterQuitGroupCommand: {delivery: $([[ $mode == spool ]] && echo spool || echo sync)}}
EOF
  "$bin" --config "$tmp/gateway.yaml" >"$tmp/$label.log" 2>&1 &
  local pid=$!
  pids+=("$pid")
  for _ in $(seq 100); do curl -sf -o /dev/null -X POST --data-binary "@$tmp/body.json" "$url" && break; sleep 0.1; done
  wrk -t1 -c"$conc" -d1s -s "$here/wrk/post.lua" "$url" -- "$tmp/body.json" >/dev/null
  sleep 0.3
  if [[ $mode == spool ]]; then # the warm-up's backlog first: until the count stays for 0.5 s
    local last=-1 now
    for _ in $(seq 300); do now=$(delivered); ((now == last)) && break; last=$now; sleep 0.5; done
  fi
  local t0 t1 out
  t0=$(awk '{print $14+$15}' "/proc/$pid/stat")
  local before_after
  [[ $mode == spool ]] && before_after=$(delivered)
  out=$(wrk -t"$((conc < 2 ? 1 : 2))" -c"$conc" -d"${secs}s" -s "$here/wrk/post.lua" "$url" -- "$tmp/body.json" | grep WRKJSON)
  if [[ $mode == spool ]]; then # its deliveries: every acknowledged event (2xx) reached the upstream
    local acked waited=0
    acked=$(python3 -c 'import json,sys; d=json.loads(sys.argv[1]); print(d["requests"]-d["status"])' "${out#WRKJSON }")
    while (($(delivered) - before_after < acked && waited < 600)); do sleep 0.1; waited=$((waited + 1)); done
    ((waited < 600)) || echo "bench/ab.sh: $label: the upstream got $(($(delivered) - before_after)) of $acked acknowledged events within 60 s" >&2
  fi
  t1=$(awk '{print $14+$15}' "/proc/$pid/stat")
  kill "$pid"; wait "$pid" 2>/dev/null || true
  echo "$label $t0 $t1 $(getconf CLK_TCK) ${out#WRKJSON }" >>"$tmp/results"
  tail -n1 "$tmp/results" | python3 "$tmp/show.py" line
}

cat >"$tmp/show.py" <<'PY'
import json, statistics, sys
def parse(line):
    label, t0, t1, hz, js = line.split(" ", 4)
    d = json.loads(js)
    n = max(d["requests"], 1)
    return label, {
        "req/s": d["requests"] / (d["duration_us"] / 1e6),
        "p50": d["p50"], "p99": d["p99"],
        "cpu": (int(t1) - int(t0)) * 1e6 / int(hz) / n,
        "errors": d["status"] + d["read"] + d["write"] + d["timeout"] + d["connect"],
    }
def fmt(label, r):
    return (f"{label:12} {r['req/s']:8.0f} req/s  p50 {r['p50']:6.0f} µs  p99 {r['p99']:6.0f} µs  "
            f"CPU {r['cpu']:6.1f} µs/req" + (f"  ({r['errors']:.0f} errors)" if r["errors"] else ""))
lines = [l for l in sys.stdin.read().splitlines() if l.strip()]
if sys.argv[1] == "line":
    print(fmt(*parse(lines[-1])), flush=True)
else:
    by = {}
    for l in lines:
        label, r = parse(l)
        by.setdefault(label, []).append(r)
    print("medians:")
    for label, rs in by.items():
        print(fmt(label, {k: statistics.median(r[k] for r in rs) for k in rs[0]}))
PY

echo "MODE=$mode REPLY=$reply c=$conc log.filter=$log_filter, $rounds rounds of ${secs} s, interleaved; load average $(cut -d' ' -f1-3 /proc/loadavg)"
for ((r = 1; r <= rounds; r++)); do
  for spec in "$@"; do
    run "${spec%%=*}" "${spec#*=}"
  done
done
python3 "$tmp/show.py" medians <"$tmp/results"
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
