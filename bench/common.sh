# Sourced by bench/run.sh and bench/peers.sh: what runs at exit, and the work directory.

# Steps (shell words) run at exit, last added last, whatever the exit status; a step
# that fails does not stop the others.
cleanup=()
on_exit() {
    local status=$?
    for step in "${cleanup[@]}"; do eval "$step" || true; done
    exit "$status"
}
trap on_exit EXIT

# bench_work_dir NAME: sets $work to $BENCH_WORK (kept), or to a new /tmp/NAME.XXXXXX
# removed at exit.
bench_work_dir() {
    if [[ -n "${BENCH_WORK:-}" ]]; then
        work=$BENCH_WORK
        mkdir -p "$work"
    else
        work=$(mktemp -d "/tmp/$1.XXXXXX")
        cleanup+=("rm -rf '$work'")
    fi
}
