#!/usr/bin/env bash
# The whole CROHME benchmark in one time budget: both model families trained and evaluated.
#
#   BUDGET=540 OUT=$OUT MANUAL_DIR=data bash results/run_crohme.sh          # one GPU (the default)
#   PROFILE=cpu BUDGET=240 DATA_DIR=D OUT=O bash results/run_crohme.sh      # CPU smoke run (CI)
#
# On the GPU machine (device tool), whose Python lacks TFDS, Grain, ml_collections,
# tensorboardX and rapidfuzz: here `bash ../shared/tools/device_wheels.sh tensorboardX rapidfuzz` and
# `mkdir -p data && cp ../shared/crohme/data.zip data/`, then one call carrying .whl and data:
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
#       --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD && \
#   COMMIT=<git rev-parse HEAD here> bash results/run_crohme.sh
#
# 1. Prepare the dataset from data.zip in $MANUAL_DIR; meanwhile, in the background, time
#    the PyTorch twin of the CRNN against the JAX step (benchmarks/train_throughput.py).
# 2. Train the CRNN (configs/vgg16.py: 50 epochs, capped at $CRNN_SECONDS of training).
#    Meanwhile a throwaway one-step run of the attention model compiles its programs into
#    JAX's persistent cache (CPU work while the GPU trains the CRNN; COMPILE_AHEAD=0 skips it).
# 3. Attention model (configs/attention.py): stage A trains $STAGE_A_STEPS steps (inside
#    the warm-up) to measure its throughput; stage B resumes with as many epochs as the
#    time left allows, so that its cosine schedule is sized to the budget. Meanwhile the
#    CRNN is exported and evaluated in the background.
# 4. Export the attention model; evaluate it with beam search (width 10, both directions)
#    and greedily on 2014, 2016 and 2019 (those present).
# $OUT then holds at most 8 files of at most 16 MB: crohme_gpu.json (the summary:
# results/run_crohme.py summary), logs.tgz (logs, metrics.json, evaluate reports) and
# models.tar.partNN (both params-only exports; `cat models.tar.part* | tar x`). They are
# written on exit whatever happened, so a failure or a timeout keeps everything made so far.
set -uo pipefail
cd "$(dirname "$0")/.."
PROFILE=${PROFILE:-gpu}
BUDGET=${BUDGET:-540}                  # seconds from start to the last file
OUT=${OUT:-results/out}
MANUAL_DIR=${MANUAL_DIR:-data}         # where data.zip lies (an ignored folder of the checkout)
DATA_DIR=${DATA_DIR:-/tmp/tfds}
RUN=${RUN:-/tmp/run_crohme}            # work dirs, logs and reports (not copied whole to $OUT)
PY=${PY:-python3}
COMMIT=${COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}

if [[ $PROFILE == gpu ]]; then
  DATASET=crohme  # evaluated on its config's test splits present: 2014, 2016, 2019
  CRNN=(--config configs/vgg16.py --config.train.eval_every_epochs=5)
  ATTENTION=(--config configs/attention.py --config.train.eval_every_epochs=0
             --config.eval.batch_size=128)
  TORCH=(--config configs/vgg16.py --width 256 --steps 20)
  CRNN_SECONDS=${CRNN_SECONDS:-130}    # training time cap of the CRNN
  STARTUP_SECONDS=${STARTUP_SECONDS:-100}  # process start to first step, at most
  STAGE_A_STEPS=${STAGE_A_STEPS:-60}
  ATTENTION_EVAL_SECONDS=${ATTENTION_EVAL_SECONDS:-120}
  STAGE_B_MAX_SECONDS=${STAGE_B_MAX_SECONDS:-100000}  # the rest of the budget
  COMPILE_AHEAD=${COMPILE_AHEAD:-1}    # the attention programs compiled on the idle CPU
elif [[ $PROFILE == cpu ]]; then       # tiny models on the tiny synthetic dataset
  DATASET=crohme_synthetic/tiny  # test split
  data=(--config.dataset.name=crohme_synthetic/tiny --config.train.progress_bar=false)
  CRNN=(--config configs/quickstart.py "${data[@]}" --config.model.small_channels='(8,16,32)'
        --config.model.lstm_hidden=32 --config.train.batch_size=16 --config.train.num_epochs=2
        --config.eval.batch_size=16)
  ATTENTION=(--config configs/attention_synthetic.py "${data[@]}" --config.model.d_model=32
             --config.model.growth_rate=4 --config.model.dense_layers=1
             --config.model.num_heads=4 --config.model.decoder_layers=1 --config.model.ffn_dim=32
             --config.model.coverage_channels=4 --config.model.max_decode_length=30
             --config.input.height=0 --config.input.max_height=64 --config.input.max_width=256
             --config.input.canvases='((48,160,16),(64,256,32))' --config.input.sort_window=2
             --config.train.batch_size=16 --config.train.eval_every_epochs=0
             --config.eval.batch_size=16 --config.eval.beam_width=3)
  TORCH=(--config configs/quickstart.py --batch_size 16 --width 128 --steps 3)
  CRNN_SECONDS=${CRNN_SECONDS:-8}
  STARTUP_SECONDS=${STARTUP_SECONDS:-60}
  STAGE_A_STEPS=${STAGE_A_STEPS:-4}
  ATTENTION_EVAL_SECONDS=${ATTENTION_EVAL_SECONDS:-40}
  STAGE_B_MAX_SECONDS=${STAGE_B_MAX_SECONDS:-8}  # a smoke run: enough to see it train on
  # Off: on 2 cores the compile competes with the CRNN's training, which is the critical path.
  COMPILE_AHEAD=${COMPILE_AHEAD:-0}
else
  echo "PROFILE=$PROFILE: use gpu or cpu" >&2; exit 2
fi
read -r -a EXTRA <<< "${EXTRA:-}"      # more --config.* flags for both trainings,
read -r -a CRNN_EXTRA <<< "${CRNN_EXTRA:-}"            # for the CRNN's only,
read -r -a ATTENTION_EXTRA <<< "${ATTENTION_EXTRA:-}"  # for the attention model's only
[[ -n ${TORCH_ARGS:-} ]] && read -r -a TORCH <<< "$TORCH_ARGS"  # benchmarks/train_throughput.py's
MAX_EVAL_SAMPLES=${MAX_EVAL_SAMPLES:-0}  # >0: only the first N of each split (dry runs on CPU)
CRNN+=("${CRNN_EXTRA[@]}" "${EXTRA[@]}")
ATTENTION+=("${ATTENTION_EXTRA[@]}" "${EXTRA[@]}")

mkdir -p "$OUT" "$RUN/logs" "$RUN/crnn" "$RUN/attention" "$RUN/attention_cold_start"
: > "$RUN/stages.tsv"
export PYTHONUNBUFFERED=1 JAX_COMPILATION_CACHE_DIR="$RUN/jax_cache"
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # several processes share the GPU at times
START=$SECONDS
left() { echo $(( BUDGET - (SECONDS - START) )); }
bounded() { local seconds=$1; (( seconds > $2 )) && seconds=$2; (( seconds < 1 )) && seconds=1; echo "$seconds"; }

stage() {  # stage NAME TIMEOUT COMMAND...: runs it with its log; records its exit status
  local name=$1 limit=$2; shift 2
  local begin=$SECONDS
  timeout --kill-after=5 "$limit" "$@" > "$RUN/logs/$name.log" 2>&1
  local rc=$?
  printf '%s\t%s\t%s\n' "$name" "$rc" $(( SECONDS - begin )) >> "$RUN/stages.tsv"
  echo "[$(( SECONDS - START )) s] $name: exit $rc ($(( SECONDS - begin )) s; log $RUN/logs/$name.log)"
  return $rc
}

collect() {  # whatever exists goes to $OUT, also after a failure
  trap - EXIT
  wait  # background stages end by their own timeouts
  "$PY" results/run_crohme.py summary --run_dir "$RUN" --out "$OUT/crohme_gpu.json" \
      --profile "$PROFILE" --commit "$COMMIT" --budget "$BUDGET" \
      --total_seconds $(( SECONDS - START )) > "$RUN/logs/summary.log" 2>&1
  cat "$RUN/logs/summary.log"
  nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv > "$RUN/logs/nvidia_smi.log" 2>&1
  (cd "$RUN" && tar czf "$OUT/logs.tgz" logs stages.tsv versions.json throughput.json \
      ./*/config.txt ./*/metrics_stage_a.json ./*/workdir/metrics.json ./*/reports/*.json \
      2>/dev/null)
  rm -f "$OUT"/models.tar.part*
  local exports=()
  for name in crnn attention; do
    [[ -f $RUN/$name/export/model.json ]] && exports+=("$name/export")
  done
  if (( ${#exports[@]} )); then
    tar cf - -C "$RUN" "${exports[@]}" | split -b 15m -d - "$OUT/models.tar.part"
  fi
  ls -l "$OUT"
  echo "total $(( SECONDS - START )) s of $BUDGET"
}
trap collect EXIT

train() {  # train NAME STAGE TIMEOUT FLAGS...
  local name=$1 label=$2 limit=$3; shift 3
  stage "$label" "$limit" "$PY" train.py "$@" --workdir "$RUN/$name/workdir" \
      --config.dataset.data_dir="$DATA_DIR" --config.dataset.manual_dir="$MANUAL_DIR" \
      --config.train.progress_bar=false --config.train.log_every_steps=20 \
      --config.train.compilation_cache_dir="$RUN/jax_cache"
}

evaluate() {  # evaluate NAME CHECKPOINT TIMEOUT
  stage "evaluate_$1" "$3" "$PY" results/run_crohme.py evaluate --workdir "$RUN/$1/workdir" \
      --checkpoint "$2" --export "$RUN/$1/export" --output_dir "$RUN/$1/reports" \
      --max_samples "$MAX_EVAL_SAMPLES"
}

echo "${CRNN[*]}" > "$RUN/crnn/config.txt"
echo "${ATTENTION[*]}" > "$RUN/attention/config.txt"

# 1. Data; the PyTorch comparison meanwhile.
stage torch_comparison "$(bounded $(( $(left) / 3 )) 150)" "$PY" benchmarks/train_throughput.py \
    "${TORCH[@]}" --output_json "$RUN/throughput.json" &
stage prepare "$(bounded $(( $(left) - 60 )) 300)" "$PY" results/run_crohme.py prepare \
    --dataset "$DATASET" --data_dir "$DATA_DIR" --manual_dir "$MANUAL_DIR" --out "$RUN" || exit 1

# 2. The CRNN; the attention programs compiled meanwhile (a throwaway work dir).
if (( COMPILE_AHEAD )); then
  train attention_cold_start compile_attention $(( STARTUP_SECONDS + 30 )) \
      "${ATTENTION[@]}" --config.train.max_steps=1 &
fi
train crnn train_crnn "$(bounded $(( CRNN_SECONDS + STARTUP_SECONDS + 30 )) $(( $(left) - 60 )))" \
    "${CRNN[@]}" --config.train.max_seconds="$CRNN_SECONDS"
evaluate crnn best "$(bounded $(( $(left) - 20 )) 400)" &

# 3. The attention model: measure, then train for the rest of the budget.
train attention train_attention_a "$(bounded $(( STARTUP_SECONDS + 60 )) $(( $(left) - ATTENTION_EVAL_SECONDS - 30 )))" \
    "${ATTENTION[@]}" --config.train.max_steps="$STAGE_A_STEPS" || exit 1
cp "$RUN/attention/workdir/metrics.json" "$RUN/attention/metrics_stage_a.json"
restart_seconds=$("$PY" -c "import json; print(int(json.load(open('$RUN/attention/metrics_stage_a.json'))['seconds_to_first_step']) + 10)")
stage_a_seconds=$("$PY" -c "import json; print(int(json.load(open('$RUN/attention/metrics_stage_a.json'))['train_seconds']) + 1)")
train_seconds=$(( $(left) - ATTENTION_EVAL_SECONDS - restart_seconds - 15 ))
(( train_seconds > STAGE_B_MAX_SECONDS )) && train_seconds=$STAGE_B_MAX_SECONDS
epochs=$("$PY" results/run_crohme.py epochs --metrics "$RUN/attention/metrics_stage_a.json" \
         --seconds "$train_seconds")
echo "attention stage B: $epochs epochs in about $train_seconds s of training"
train attention train_attention_b "$(bounded $(( train_seconds + restart_seconds + 30 )) $(( $(left) - ATTENTION_EVAL_SECONDS + 10 )))" \
    "${ATTENTION[@]}" --config.train.num_epochs="$epochs" \
    --config.train.max_seconds=$(( stage_a_seconds + train_seconds ))

# 4. Its evaluation; the summary and the files follow on exit.
evaluate attention latest "$(bounded $(( $(left) - 12 )) 600)"
