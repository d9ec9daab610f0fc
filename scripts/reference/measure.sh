#!/usr/bin/env bash
# Re-measure a reference: run a seed's own TF1 program over several random seeds, one at a
# time, in a separate TensorFlow environment (created on first use, outside the repo).
#
#   bash scripts/reference/measure.sh SEED_ID [NUM_SEEDS] [FIRST_SEED]
#
# SEED_ID is 000 (both the tf.layers and the tf.nn version per seed), 001 or 002.
# Writes reference-out/seed-<SEED_ID>-tf1.jsonl (appending one line per run; the shipped
# figures are src/bnlab/report/reference_runs/seed-<SEED_ID>-tf1.jsonl: copy the new file
# there to replace them). Environment: TFREF_VENV (default $TMPDIR/bnlab-tfref),
# MNIST_IDX_DIR (default ~/.cache/bnlab/mnist: `bnlab data fetch` fills it), TF_THREADS
# (default 1), NICE (default 10).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
seed_id=${1:?usage: measure.sh 000|001|002 [NUM_SEEDS] [FIRST_SEED]}
num=${2:-5}
first=${3:-0}
case "$seed_id" in
  000) program=tf1_seed000_ref.py; versions=(layers nn) ;;
  001) program=tf1_seed001_ref.py; versions=("") ;;
  002) program=tf1_seed002_ref.py; versions=("") ;;
  *) echo "measure.sh: SEED_ID must be 000, 001 or 002; got $seed_id" >&2; exit 2 ;;
esac

venv=${TFREF_VENV:-${TMPDIR:-/tmp}/bnlab-tfref}
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import tensorflow, tf_keras" 2>/dev/null; then
  echo "[reference] creating $venv (tensorflow-cpu, tf-keras, numpy; see requirements.txt)"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --upgrade pip
  "$venv/bin/pip" install --quiet -r "$here/requirements.txt"
fi

export MNIST_IDX_DIR=${MNIST_IDX_DIR:-$HOME/.cache/bnlab/mnist}
for f in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do
  if [ ! -f "$MNIST_IDX_DIR/$f" ]; then
    echo "measure.sh: $MNIST_IDX_DIR/$f is missing: run 'bnlab data fetch' (or set MNIST_IDX_DIR" \
      "to a directory with the four uncompressed MNIST IDX files)" >&2
    exit 2
  fi
done

# One thread per run and one run at a time: the figures must not depend on a busy machine.
export TF_USE_LEGACY_KERAS=1 TF_CPP_MIN_LOG_LEVEL=2 OMP_NUM_THREADS=1
export TF_THREADS=${TF_THREADS:-1}
out_dir="$root/reference-out"
mkdir -p "$out_dir"
out="$out_dir/seed-$seed_id-tf1.jsonl"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"  # the programs write nothing else, but keep the repo clean regardless
for ((seed = first; seed < first + num; seed++)); do
  for version in "${versions[@]}"; do
    echo "[reference] seed $seed_id ${version:+($version) }random seed $seed -> $out"
    # shellcheck disable=SC2086
    nice -n "${NICE:-10}" "$venv/bin/python" "$here/$program" $version "$seed" "$out"
  done
done
echo "[reference] done: $out"
