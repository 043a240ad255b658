#!/usr/bin/env bash
# Crash-and-resume demo of persistence on a real training job.
#
# Builds train_lm, then on 2 ranks:
#   1. trains a reference run to the end in a fresh directory;
#   2. starts the same run in another fresh directory and kills every process
#      of it with SIGKILL once it has passed two saves;
#   3. resumes that directory to the end;
#   4. checks that every loss after the resume step equals the reference,
#      digit for digit, and that the final weights are bit-identical.
# Then, as a bonus, resumes a copy of the killed run on 3 ranks.
#
# Prints one summary line per check; exits 0 when the resumed run matches.
#
# Usage: scripts/demo.sh [--hdfs]
#   --hdfs  starts the WebHDFS test server (scripts/webhdfs_server.py) on
#           127.0.0.1, and the killed run saves to hdfs://127.0.0.1:8020/demo/killed
#           through it. That run writes each step to a local staging directory
#           and stages it out to the server's backing directory. The resume
#           starts with another, empty staging directory, so it stages the
#           newest step in from HDFS. The reference run stays local, and the
#           3-rank bonus is skipped.
#
# Environment (all optional):
#   BUILD_DIR   build directory (default: build)
#   STEPS       training steps (default: 120)
#   SAVE_EVERY  steps between saves (default: 20)
#   KILL_AT     step after which the second run is killed (default: two and a half saves)
#   BONUS       1 runs the 3-rank resume, 0 skips it (default: 1)
#   TRAIN_LM    a train_lm binary to use instead of building one
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build_dir=${BUILD_DIR:-build}
steps=${STEPS:-120}
save_every=${SAVE_EVERY:-20}
kill_at=${KILL_AT:-$((2 * save_every + save_every / 2))}
bonus=${BONUS:-1}
ranks=2
started=$(date +%s)

hdfs=0
for argument in "$@"; do
  case $argument in
    --hdfs) hdfs=1 ;;
    *)
      echo "demo: unknown argument '$argument'; the only option is --hdfs" >&2
      exit 2
      ;;
  esac
done
if [[ "$hdfs" == 1 ]]; then
  bonus=0
fi

if ((kill_at <= 2 * save_every || kill_at >= steps)); then
  echo "demo: KILL_AT=$kill_at must lie after the second save (step $((2 * save_every))) and before STEPS=$steps" >&2
  exit 2
fi

work=$(mktemp -d -t persistence-demo.XXXXXX)
victim_sid=""
server_pid=""

cleanup() {
  # A run still alive here was interrupted with the script; end it before removing its files.
  if [[ -n "$victim_sid" ]]; then
    kill_session "$victim_sid"
  fi
  if [[ -n "$server_pid" ]]; then
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

note() { echo "demo: $*" >&2; }

# Ends every process of session $1 (mpiexec and all its ranks) with SIGKILL at
# once, then waits until none is left. Open MPI puts each rank in a process
# group of its own, so the session, not the process group, contains the whole job.
kill_session() {
  local sid=$1 pids
  pids=$(ps -o pid= --sid "$sid" || true)
  if [[ -n "$pids" ]]; then
    # shellcheck disable=SC2086 # one pid per word
    kill -9 $pids 2>/dev/null || true
  fi
  for _ in $(seq 100); do
    [[ -z "$(ps -o pid= --sid "$sid" || true)" ]] && return 0
    sleep 0.1
  done
  note "processes of session $sid survived SIGKILL: $(ps -o pid=,args= --sid "$sid" || true)"
  return 1
}

# Shows the end of a log after a failure.
show_log() {
  echo "---- last lines of $1" >&2
  tail -n 20 "$1" >&2 || true
}

# mpiexec arguments for $1 ranks on this machine.
mpi_args() {
  local n=$1
  local args=(--allow-run-as-root -n "$n" -x PERSISTENCE_REGISTRY)
  if [[ "$hdfs" == 1 ]]; then
    args+=(-x PERSISTENCE_WEBHDFS_ADDRESS -x PERSISTENCE_STAGING_DIR)
  fi
  if ((n > $(nproc))); then
    args+=(--oversubscribe)
  fi
  echo "${args[@]}"
}

# Runs train_lm on $1 ranks in save directory $2 to the end, output in $3.
train() {
  local n=$1 dir=$2 log=$3
  # shellcheck disable=SC2046 # mpi_args yields separate words
  if ! mpiexec $(mpi_args "$n") "$train_lm" --save-dir "$dir" --steps "$steps" --save-every "$save_every" \
      >"$log" 2>&1; then
    note "train_lm on $n ranks in $dir failed"
    show_log "$log"
    exit 1
  fi
}

# Prints the step that a train_lm log reports it resumed from, or 0.
resume_step() {
  sed -n 's/^resumed from step \([0-9]*\)$/\1/p' "$1" | head -n 1 | grep . || echo 0
}

# Prints "step loss" pairs of a train_lm log.
losses() {
  sed -n 's/^step \([0-9]*\) loss \([^ ]*\)$/\1 \2/p' "$1"
}

final_hash() {
  sed -n 's/^weights hash \([0-9a-f]*\)$/\1/p' "$1"
}

final_loss() {
  sed -n 's/^final step [0-9]* loss \([^ ]*\)$/\1/p' "$1"
}

# Starts the WebHDFS test server on 127.0.0.1 over $work/hdfs and points
# PERSISTENCE_WEBHDFS_ADDRESS at its NameNode port. The server stops by itself
# when this shell exits.
start_webhdfs_server() {
  python3 scripts/webhdfs_server.py --root "$work/hdfs" --log "$work/webhdfs-requests.jsonl" \
    --port-file "$work/webhdfs-ports.json" --parent-pid $$ --max-lifetime 3600 \
    >/dev/null 2>"$work/webhdfs-server.log" &
  server_pid=$!
  for _ in $(seq 200); do
    [[ -s "$work/webhdfs-ports.json" ]] && break
    if ! kill -0 "$server_pid" 2>/dev/null; then
      note "the WebHDFS test server did not start"
      show_log "$work/webhdfs-server.log"
      exit 1
    fi
    sleep 0.1
  done
  local port
  port=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["namenode"])' "$work/webhdfs-ports.json")
  export PERSISTENCE_WEBHDFS_ADDRESS="127.0.0.1:$port"
  note "WebHDFS test server on $PERSISTENCE_WEBHDFS_ADDRESS, backing directory $work/hdfs"
}

# Prints the steps whose files the request log shows renamed into place under
# HDFS directory $1, then "|", then the steps opened for reading there.
hdfs_activity() {
  python3 - "$work/webhdfs-requests.jsonl" "$1" <<'PY'
import json, re, sys
log, directory = sys.argv[1], sys.argv[2]
step = re.compile(re.escape(directory) + r"/step_0*([0-9]+)\.h5$")
staged_out, staged_in = [], []
for line in open(log, encoding="utf-8"):
    request = json.loads(line)
    if request["role"] != "namenode" or request["status"] >= 300 and request["status"] != 307:
        continue
    if request["op"] == "RENAME":
        match = step.match(request["query"].get("destination", ""))
        if match:
            staged_out.append(match.group(1))
    if request["op"] == "OPEN":
        match = step.match(request["path"])
        if match:
            staged_in.append(match.group(1))
print(" ".join(staged_out) + "|" + " ".join(staged_in))
PY
}

# ---- build -----------------------------------------------------------------
cd "$repo"
if [[ -n "${TRAIN_LM:-}" ]]; then
  train_lm=$TRAIN_LM
else
  if [[ -f scripts/setup.sh ]]; then
    note "running scripts/setup.sh"
    bash scripts/setup.sh
  fi
  note "building train_lm in $build_dir (log: $work/build.log)"
  if ! { cmake -S . -B "$build_dir" && cmake --build "$build_dir" -j"$(nproc)" --target train_lm; } \
      >"$work/build.log" 2>&1; then
    note "the build failed"
    show_log "$work/build.log"
    exit 1
  fi
  train_lm="$repo/$build_dir/bin/train_lm"
fi
export PERSISTENCE_REGISTRY="$work/registry"
killed_dir="$work/killed"
if [[ "$hdfs" == 1 ]]; then
  start_webhdfs_server
  killed_dir="hdfs://127.0.0.1:8020/demo/killed"
  export PERSISTENCE_STAGING_DIR="$work/staging-killed"
fi
built=$(date +%s)

# ---- 1. reference run --------------------------------------------------------
note "1/4 reference run: $steps steps on $ranks ranks"
train "$ranks" "$work/reference" "$work/reference.log"

# ---- 2. a run killed in the middle -------------------------------------------
note "2/4 second run, killed with SIGKILL after step $kill_at"
# setsid gives the job a session of its own, so one kill reaches mpiexec and every rank.
# shellcheck disable=SC2046 # mpi_args yields separate words
setsid mpiexec $(mpi_args "$ranks") "$train_lm" --save-dir "$killed_dir" --steps "$steps" \
  --save-every "$save_every" >"$work/killed.log" 2>&1 &
victim_sid=$!
# Disowned, the shell prints no "Killed" notice for it; kill_session waits for its end instead.
disown "$victim_sid"
# With --hdfs, the kill also waits for the first step file on HDFS: steps are
# staged out in the background once the next save seals them.
on_hdfs() { [[ "$hdfs" == 0 ]] || compgen -G "$work/hdfs/demo/killed/step_*.h5" >/dev/null; }
for _ in $(seq 1200); do
  grep -q "^step $kill_at " "$work/killed.log" 2>/dev/null && on_hdfs && break
  if ! kill -0 "$victim_sid" 2>/dev/null; then
    note "the second run ended before step $kill_at"
    show_log "$work/killed.log"
    exit 1
  fi
  sleep 0.1
done
if ! grep -q "^step $kill_at " "$work/killed.log" || ! on_hdfs; then
  note "the second run did not reach step $kill_at, with a step file on HDFS, within 120 s"
  show_log "$work/killed.log"
  exit 1
fi
kill_session "$victim_sid"
victim_sid=""
killed_at=$(losses "$work/killed.log" | tail -n 1 | cut -d' ' -f1)
if [[ "$bonus" == 1 ]]; then
  cp -a "$work/killed" "$work/bonus"
fi

# ---- 3. resume -------------------------------------------------------------
note "3/4 resuming the killed run (last printed step $killed_at) on $ranks ranks"
if [[ "$hdfs" == 1 ]]; then
  # A fresh staging directory: the resumed run finds its step on HDFS only.
  export PERSISTENCE_STAGING_DIR="$work/staging-resumed"
  staged_before=$(hdfs_activity /demo/killed)
fi
train "$ranks" "$killed_dir" "$work/resumed.log"
resumed_from=$(resume_step "$work/resumed.log")
if ((resumed_from == 0)); then
  echo "demo: the run killed after step $killed_at left no resumable step; the resumed run started over"
  exit 1
fi

# ---- 4. compare --------------------------------------------------------------
note "4/4 comparing losses after step $resumed_from with the reference"
expected=$((steps - resumed_from))
if ! verdict=$(awk -v from="$resumed_from" '
    NR == FNR { reference[$1] = $2; next }
    $1 > from {
      n++
      if (reference[$1] != $2) { printf "step %d differs: reference %s, resumed %s\n", $1, reference[$1], $2; bad = 1; exit }
    }
    END { if (!bad) print n + 0; exit bad }' <(losses "$work/reference.log") <(losses "$work/resumed.log")); then
  echo "demo: resumed from step $resumed_from on $ranks ranks; $verdict"
  exit 1
fi
if ((verdict != expected)); then
  echo "demo: resumed from step $resumed_from on $ranks ranks; expected $expected later losses, compared $verdict"
  exit 1
fi
weights="final weights bit-identical"
if [[ "$(final_hash "$work/reference.log")" != "$(final_hash "$work/resumed.log")" ]]; then
  weights="but the final weights differ (hash $(final_hash "$work/reference.log") vs $(final_hash "$work/resumed.log"))"
  echo "demo: resumed from step $resumed_from on $ranks ranks; $verdict later losses match the reference exactly, $weights"
  exit 1
fi
echo "demo: resumed from step $resumed_from on $ranks ranks (killed after step $killed_at);" \
  "$verdict later losses match the reference exactly, $weights" \
  "(build $((built - started)) s, three runs $(($(date +%s) - built)) s)"

if [[ "$hdfs" == 1 ]]; then
  opened=$(hdfs_activity /demo/killed)
  opened=${opened#*|}
  before_out=${staged_before%|*}
  echo "demo (hdfs): the killed run saved to $killed_dir and staged out step(s) ${before_out:-none} before" \
    "SIGKILL; the resumed run started with an empty staging directory, staged in step(s) ${opened:-none} from" \
    "HDFS and resumed from step $resumed_from"
  if [[ " $opened " != *" $resumed_from "* ]]; then
    echo "demo (hdfs): step $resumed_from was not staged in from HDFS"
    exit 1
  fi
fi

# ---- bonus: resume on another world size -------------------------------------
# A 2-rank checkpoint resumed on 3 ranks. Each rank still draws its own batch,
# so the global batch grows and the losses leave the reference: this only shows
# that training continues from the saved state.
if [[ "$bonus" == 1 ]]; then
  note "bonus: resuming a copy of the killed run on 3 ranks"
  train 3 "$work/bonus" "$work/bonus.log"
  bonus_from=$(resume_step "$work/bonus.log")
  if ((bonus_from == 0)); then
    echo "demo (bonus): the 3-rank run found no checkpoint to resume and started over"
    exit 1
  fi
  first=$(losses "$work/bonus.log" | head -n 1)
  echo "demo (bonus): a 3-rank run resumed the 2-rank checkpoint of step $bonus_from and trained to step $steps;" \
    "step ${first%% *} loss ${first#* } (2-rank reference $(losses "$work/reference.log" | awk -v s="${first%% *}" '$1 == s { print $2 }'));" \
    "final loss $(final_loss "$work/bonus.log") (reference $(final_loss "$work/reference.log")); $(($(date +%s) - started)) s in all"
fi
