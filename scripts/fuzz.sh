#!/usr/bin/env bash
# The fuzz campaign (issue 14): runs each AFL++ target of fuzz/ for a bounded time, one after
# the other, then folds what it learnt back into the committed corpus.
#
#   scripts/fuzz.sh [TARGET] [--minutes N]
#
# TARGET is one of codec_text, codec_binary, http_bodies, ws_request, ws_channel_frames
# (default: all, in turn);
# N is the minutes per target (default 10). Each target starts from fuzz/corpus/<target>/ and
# stops by itself after N minutes. Then:
#   - every crash is copied to fuzz/crashes/<target>/crash-<sha1> (kept: the replay test
#     tests/fuzz_corpus.rs runs them all, so a fixed bug stays fixed);
#   - the corpus plus the new finds are minimised with afl-cmin (one input per coverage
#     profile) into fuzz/corpus/<target>/, named by content hash;
#   - a table of execs/s, run time, corpus size, crashes and hangs is printed at the end.
# AFL's working files go to fuzz/out/<target>/ (not committed).
#
# Needs cargo-afl: `cargo install cargo-afl`, which compiles AFL++ from the sources the crate
# ships, offline (a C compiler and make are enough). Runs outside CI, on the stable toolchain.
set -euo pipefail

ALL_TARGETS=(codec_text codec_binary http_bodies ws_request ws_channel_frames)
minutes=10
targets=()
while (($#)); do
    case "$1" in
    --minutes)
        minutes="${2:?--minutes needs a number}"
        shift 2
        ;;
    -h | --help)
        sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'
        exit 0
        ;;
    *)
        if [[ " ${ALL_TARGETS[*]} " != *" $1 "* ]]; then
            echo "unknown target $1; known: ${ALL_TARGETS[*]}" >&2
            exit 2
        fi
        targets+=("$1")
        shift
        ;;
    esac
done
((${#targets[@]})) || targets=("${ALL_TARGETS[@]}")
if ! [[ "$minutes" =~ ^[0-9]+$ ]] || ((minutes < 1)); then
    echo "--minutes must be a whole number of minutes, at least 1" >&2
    exit 2
fi

root="$(cd "$(dirname "$0")/.." && pwd)"
fuzz="$root/fuzz"
if ! cargo afl --version >/dev/null 2>&1; then
    echo "cargo-afl is missing: cargo install cargo-afl (it builds AFL++ too)" >&2
    exit 1
fi

echo "== building the targets (cargo afl build --release, in fuzz/)"
(cd "$fuzz" && cargo afl build --release --quiet)

# AFL++ must not pin the cores others build on, and must not require this machine's crash
# handler or CPU governor to be changed.
export AFL_NO_UI=1 AFL_NO_AFFINITY=1 AFL_SKIP_CPUFREQ=1
export AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_SKIP_CRASHES=1 AFL_QUIET=1

# Minimises the inputs in $1 into $2 for target binary $3, logging to $4, with `cargo afl
# cmin`; the Python afl-cmin that runs (AFL++ 4.40c) finds no coverage in these targets
# ("Found 0 unique tuples") and keeps nothing, so then the shell afl-cmin.bash shipped
# beside it is tried.
minimise() {
    local pool="$1" min="$2" bin="$3" log="$4" bindir
    rm -rf "$min"
    if cargo afl cmin -i "$pool" -o "$min" -t 2000 -- "$bin" >"$log" 2>&1 &&
        [[ -n "$(ls -A "$min" 2>/dev/null)" ]]; then
        return 0
    fi
    bindir="$(dirname "$(compgen -G "$HOME/.local/share/afl.rs/rustc-*/afl.rs-*/afl/bin/afl-cmin.bash" | tail -1 || true)")"
    [[ -x "$bindir/afl-cmin.bash" ]] || return 1
    rm -rf "$min"
    PATH="$bindir:$PATH" AFL_PATH="$bindir" "$bindir/afl-cmin.bash" -i "$pool" -o "$min" -t 2000 -- "$bin" \
        >>"$log" 2>&1 && [[ -n "$(ls -A "$min" 2>/dev/null)" ]]
}

summary=()
for target in "${targets[@]}"; do
    bin="$fuzz/target/release/$target"
    corpus="$fuzz/corpus/$target"
    crashes="$fuzz/crashes/$target"
    out="$fuzz/out/$target"
    rm -rf "$out"
    mkdir -p "$out" "$crashes"
    seconds=$((minutes * 60))
    echo "== $target: fuzzing for $minutes min from $(find "$corpus" -type f | wc -l) inputs"
    # -V stops AFL++ by itself; the timeout is only a backstop should it not.
    timeout --signal=INT --kill-after=30 $((seconds + 120)) \
        cargo afl fuzz -i "$corpus" -o "$out" -V "$seconds" -t 2000 -- "$bin" \
        >"$out/afl.log" 2>&1 || echo "   afl-fuzz exited with $? (see $out/afl.log)"
    stats="$out/default/fuzzer_stats"
    if [[ ! -f "$stats" ]]; then
        echo "   no fuzzer_stats: afl-fuzz did not run; the end of $out/afl.log:" >&2
        tail -20 "$out/afl.log" >&2
        summary+=("$(printf '%-14s %s' "$target" "did not run")")
        continue
    fi
    stat() { awk -F' *: *' -v k="$1" '$1 == k { print $2 }' "$stats"; }

    found=0
    for f in "$out"/default/crashes/id:*; do
        [[ -f "$f" ]] || continue
        cp "$f" "$crashes/crash-$(sha1sum "$f" | cut -c1-16)"
        found=$((found + 1))
    done

    # Minimise the old corpus and the new queue together into the committed corpus.
    pool="$out/pool"
    mkdir -p "$pool"
    cp "$corpus"/* "$pool"/ 2>/dev/null || true
    for f in "$out"/default/queue/id:*; do
        [[ -f "$f" ]] && cp "$f" "$pool/q-$(sha1sum "$f" | cut -c1-16)"
    done
    if minimise "$pool" "$out/min" "$bin" "$out/cmin.log"; then
        rm -f "$corpus"/*
        for f in "$out"/min/*; do
            cp "$f" "$corpus/$(sha1sum "$f" | cut -c1-16)"
        done
    else
        echo "   afl-cmin failed (see $out/cmin.log); corpus left as it was" >&2
    fi
    size="$(du -sb "$corpus" | cut -f1)"
    summary+=("$(printf '%-14s %10s %10s %8s %8s %7s %7s %9s' "$target" \
        "$(stat execs_per_sec)" "$(stat execs_done)" "$(stat run_time)s" \
        "$(find "$corpus" -type f | wc -l)" "$found" "$(stat saved_hangs)" "$size")")
done

echo
printf '%-14s %10s %10s %8s %8s %7s %7s %9s\n' target "execs/s" execs time corpus crashes hangs bytes
printf '%s\n' "${summary[@]}"
echo "execs/s is AFL++'s average over the whole run. Crashes are in fuzz/crashes/<target>/;"
echo "replay everything with: cargo test --test fuzz_corpus"
