#!/usr/bin/env bash
# Mutation testing of the core (see RELIABILITY.md, "Mutation testing"): cargo-mutants changes
# the code of shared/src/domain/ one mutant at a time (a condition flipped, a function body
# replaced by a constant...) and runs the callbridge-shared tests against each; a mutant no test
# notices ("missed") is a rule nothing checks. Not part of CI's time budget: the whole domain
# takes over an hour on a 2-core machine, fold.rs and record.rs about 20 minutes.
#
#   infra/mutants.sh                         every file of shared/src/domain/
#   infra/mutants.sh shared/src/domain/fold.rs shared/src/domain/record.rs
#
# Extra cargo-mutants options go in CARGO_MUTANTS_ARGS (e.g. "--jobs 2", "--list").
# The results land in target/mutants.out/ (caught.txt, missed.txt, timeout.txt, unviable.txt,
# outcomes.json); the summary line is printed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! cargo mutants --version >/dev/null 2>&1; then
    echo "cargo-mutants is not installed: cargo install --locked cargo-mutants" >&2
    exit 2
fi

files=("$@")
if [ ${#files[@]} -eq 0 ]; then
    files=("shared/src/domain/**/*.rs")
fi
file_args=()
for f in "${files[@]}"; do
    file_args+=(--file "$f")
done

# cargo-mutants builds in its own scratch copy of the tree, with its own target directory: a
# shared CARGO_TARGET_DIR would make every mutant rebuild the other checkouts' artifacts.
unset CARGO_TARGET_DIR
mkdir -p target
# shellcheck disable=SC2086 # CARGO_MUTANTS_ARGS is a list of options
cargo mutants --package callbridge-shared --test-package callbridge-shared \
    --jobs "${CARGO_MUTANTS_JOBS:-1}" --output target "${file_args[@]}" ${CARGO_MUTANTS_ARGS:-}
