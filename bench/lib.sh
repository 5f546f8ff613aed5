# shellcheck shell=bash
# Shared by the bench scripts: where results go, the machine's description, and the
# replacement of one marked section of BENCHMARKS.md.

target_dir="${CARGO_TARGET_DIR:-$PWD/target}"
# The binaries measured: BENCH_TARGET, a target triple (`just` passes x86_64-unknown-linux-musl,
# the image's static build), and BENCH_PROFILE (release; the smoke tests' debug).
bin_dir="$target_dir/${BENCH_TARGET:+$BENCH_TARGET/}${BENCH_PROFILE:-release}"
results_dir="$target_dir/bench"
mkdir -p "$results_dir"

# One line: cores, CPU model, load average now. Figures on a shared machine mean little without it.
machine_line() {
    local model
    model=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)
    printf '%s cores (nproc), %s, load average %s' \
        "$(nproc)" "${model:-unknown CPU model}" "$(cut -d' ' -f1-3 /proc/loadavg)"
}

# replace_section NAME TITLE FRAGMENT_FILE: puts the fragment between
# <!-- bench:NAME begin --> and <!-- bench:NAME end --> in BENCHMARKS.md, or appends
# "## TITLE" and the marked fragment when the markers are not there yet. Other text is kept.
replace_section() {
    local name=$1 title=$2 fragment=$3 doc=BENCHMARKS.md
    local begin="<!-- bench:$name begin -->" end="<!-- bench:$name end -->"
    if [[ ! -f $doc ]]; then
        # shellcheck disable=SC2016 # the backquotes are Markdown
        printf '# Benchmarks\n\nWritten by `just bench` (each section by its own recipe); edit the text outside the\nmarked sections only.\n' >"$doc"
    fi
    if grep -qxF "$begin" "$doc" && grep -qxF "$end" "$doc"; then
        awk -v begin="$begin" -v end="$end" -v fragment="$fragment" '
            $0 == begin { print; while ((getline line < fragment) > 0) print line; skipping = 1; next }
            $0 == end { skipping = 0 }
            !skipping { print }
        ' "$doc" >"$doc.tmp"
    else
        { cat "$doc"; printf '\n## %s\n\n%s\n' "$title" "$begin"; cat "$fragment"; printf '%s\n' "$end"; } >"$doc.tmp"
    fi
    mv "$doc.tmp" "$doc"
}
