#!/usr/bin/env bash
# Trains configs/attention.py on CROHME within a wall-clock budget, then evaluates it with
# beam search on 2014 and 2016 (results/README.md reports what it gave).
#
#   BUDGET=560 OUT=/tmp/out bash results/run_crohme_attention.sh
#   EXTRA="--config.model.scan_dense_layers=true" BUDGET=... bash results/run_crohme_attention.sh
#
# Stage A trains 120 steps (inside the warm-up) to compile every batch shape and measure
# the steady training throughput; stage B resumes that work dir with as many epochs as fit
# the budget (the cosine schedule is then exact for that length); the evaluation restores
# the last checkpoint. Compiled programs are shared through JAX's persistent cache.
# Expects data.zip in $MANUAL_DIR (default data/, an ignored folder of the checkout).
set -uo pipefail
BUDGET=${BUDGET:-560}                  # seconds for everything, from start to the last file
EVAL_SECONDS=${EVAL_SECONDS:-170}      # kept back for the beam evaluation
OUT=${OUT:-results/out}
MANUAL_DIR=${MANUAL_DIR:-data}
DATA_DIR=${DATA_DIR:-/tmp/tfds}
WORKDIR=${WORKDIR:-/tmp/wd_attention}
WORKERS=${WORKERS:-$(( $(nproc) - 2 ))}
EVAL_BATCH=${EVAL_BATCH:-128}          # images per beam-search batch (x 2 directions x 10 beams)
STAGE_A_STEPS=${STAGE_A_STEPS:-120}
TRAIN_IMAGES=${TRAIN_IMAGES:-8835}     # per epoch
read -r -a EXTRA <<< "${EXTRA:-}"      # more --config.* flags (a CPU smoke run shrinks the model)
read -r -a EVAL_EXTRA <<< "${EVAL_EXTRA:-}"
PY=${PY:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 JAX_COMPILATION_CACHE_DIR=/tmp/jax_cache
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0 JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES=0
START=$SECONDS
left() { echo $(( BUDGET - (SECONDS - START) )); }

collect() {  # whatever exists goes to $OUT, also after a failure
  cp "$WORKDIR/metrics.json" "$OUT/metrics_b.json" 2>/dev/null
  cp "$WORKDIR"/eval/report_*.json "$OUT/" 2>/dev/null
  tar czf "$OUT/eval_tsv.tgz" -C "$WORKDIR" eval tensorboard 2>/dev/null
  nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv >> "$OUT/versions.txt" 2>&1
}
trap collect EXIT

"$PY" -c "import jax, flax, optax, orbax.checkpoint, grain; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, jax.devices())" 2>&1 | tee "$OUT/versions.txt"

common=(--config configs/attention.py --workdir "$WORKDIR"
        --config.dataset.data_dir="$DATA_DIR" --config.dataset.manual_dir="$MANUAL_DIR"
        --config.input.worker_count="$WORKERS" --config.train.progress_bar=False
        --config.train.eval_every_epochs=0 --config.train.log_every_steps=10 "${EXTRA[@]}")

# Stage A: compile every shape, measure the throughput.
timeout $(( $(left) - EVAL_SECONDS - 60 )) "$PY" train.py "${common[@]}" \
    --config.train.max_steps="$STAGE_A_STEPS" 2>&1 | tee "$OUT/train_a.log"
cp "$WORKDIR/metrics.json" "$OUT/metrics_a.json"
read -r rate batch < <("$PY" -c "import json; m = json.load(open('$WORKDIR/metrics.json'))
print(m['steady_img_per_s'] or 0, m['batch_shapes'][0][0])" || echo 0 32)
# Stage B: as many epochs as the time left allows (60 s for start-up and saving).
train_seconds=$(( $(left) - EVAL_SECONDS - 60 ))
epochs=$("$PY" -c "print(max(1, int(($train_seconds * $rate + $STAGE_A_STEPS * $batch) / $TRAIN_IMAGES)))")
echo "stage A: ${rate} img/s steady; stage B: ${epochs} epochs in ~${train_seconds} s" | tee -a "$OUT/train_a.log"
timeout $(( $(left) - EVAL_SECONDS + 20 )) "$PY" train.py "${common[@]}" \
    --config.train.num_epochs="$epochs" --config.train.checkpoint_every_steps=200 \
    2>&1 | tee "$OUT/train_b.log"

# Beam search (width 10, both directions) on the test splits.
timeout $(( $(left) - 10 )) "$PY" -m hme_jax.evaluate --workdir "$WORKDIR" --checkpoint latest \
    --splits 2014,2016 --decoder beam --beam_width 10 --data_dir "$DATA_DIR" \
    --batch_size "$EVAL_BATCH" "${EVAL_EXTRA[@]}" \
    2>&1 | tee "$OUT/eval.log"
echo "total ${SECONDS}s" | tee -a "$OUT/eval.log"
