#!/usr/bin/env bash
# Runs every fuzz target for FUZZ_SECONDS (default 60) from its committed seeds, on the stable
# toolchain (no sanitizer: cargo-fuzz's default, AddressSanitizer, needs nightly). A crash
# fails the run; its input is left in fuzz/artifacts/<target>/ to be added to
# fuzz/regressions/<target>/ with the fix.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${FUZZ_SECONDS:-60}"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked --quiet
for target in sse h1_response; do
    corpus="fuzz/corpus/$target"
    mkdir -p "$corpus"
    echo "== fuzz $target (${seconds}s)"
    log="$(mktemp)"
    if ! cargo fuzz run --fuzz-dir fuzz -s none "$target" "$corpus" "fuzz/seeds/$target" \
        -- -max_total_time="$seconds" -print_final_stats=1 >"$log" 2>&1; then
        tail -n 60 "$log"
        echo "fuzz: $target crashed; the input is in fuzz/artifacts/$target/" >&2
        exit 1
    fi
    grep -E "^Done [0-9]+ runs|stat::number_of_executed_units|stat::average_exec_per_sec|stat::new_units_added" "$log" || tail -n 5 "$log"
done
