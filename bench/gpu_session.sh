#!/usr/bin/env bash
# The GPU bench (issue 6) in one command, for a session that is lent a GPU for a few minutes:
#
#   bash bench/gpu_session.sh        # from the repository root, e.g. through the device tool
#
# It runs on the GPU image as it is: its own python3 (torch, transformers, ...), this checkout on
# PYTHONPATH (nothing is pip-installed), the Hugging Face libraries offline. In order:
#   1. the machine: nvidia-smi, library versions, a preflight import of everything the bench needs;
#   2. the classifier part (bench/train_gpu.py --only classifier), under `timeout $T_CLASSIFIER`;
#   3. the SFT part with --compile (hf_original, hf_tuned, trainer_run, trainer_run_compile),
#      under `timeout $T_SFT`; each finished run is already in its JSON, so a timeout loses only
#      the run it interrupted;
#   4. both parts merged into bench/results/train_gpu.json, which is also copied to $OUT (with the
#      part files and this session's log, $OUT/gpu_session.log) when $OUT is set.
# The defaults fit the device tool's 10-minute limit per command: at most about 20 s + 120 s + 390 s
# (expected: classifier ~1 min; SFT ~3 min, plus torch.compile's own compile time).
#
# GPU_SESSION_SMOKE=1 runs the same steps with --smoke (tiny shapes, CPU is fine) and writes the
# result only to $OUT (or a temporary folder), never over bench/results: it checks this script.
# PYTHON picks another interpreter (default python3).
set -u -o pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PY=${PYTHON:-python3}
SMOKE=${GPU_SESSION_SMOKE:-0}
T_CLASSIFIER=${T_CLASSIFIER:-120}
T_SFT=${T_SFT:-390}
export PYTHONPATH="$PWD:$PWD/bench${PYTHONPATH:+:$PYTHONPATH}"  # bench/: the preflight imports train_cpu
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
unset TRAINER_CACHE  # cold token cache: `trainer run` tokenises like the baseline does

WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu-session-XXXXXX")
DEST=${OUT:-$WORK}  # what the device tool brings back
mkdir -p "$DEST"
if [ "$SMOKE" = 1 ]; then
    EXTRA=(--smoke)
    SFT_EXTRA=()  # torch.compile on a CPU needs a C++ toolchain and minutes: not in a smoke run
    RESULT="$DEST/train_gpu.json"
else
    EXTRA=()
    SFT_EXTRA=(--compile)
    RESULT=bench/results/train_gpu.json
fi

step() { printf '\n=== %s (%s UTC)\n' "$*" "$(date -u +%H:%M:%S)"; }

part() {  # part NAME SECONDS ARGS...: one bench launch under its own time limit
    local name=$1 limit=$2 rc
    shift 2
    step "$name part (at most ${limit} s)"
    timeout -k 20 "$limit" "$PY" bench/train_gpu.py --only "$name" "$@" --out "$WORK/$name.json"
    rc=$?
    case $rc in
        0) echo "$name part: done" ;;
        124|137|143) echo "$name part: stopped by the ${limit} s limit; the runs it finished are kept" ;;
        *) echo "$name part: failed with exit status $rc" ;;
    esac
}

session() {
    step "machine"
    nvidia-smi || echo "(no nvidia-smi here)"
    "$PY" - <<'EOF' || return 1
import importlib.metadata as md, platform, torch
print("python", platform.python_version(), "| torch", torch.__version__, "| cuda", torch.version.cuda)
for name in ("transformers", "huggingface_hub", "accelerate", "peft", "sentence-transformers", "safetensors", "tokenizers", "scikit-learn"):
    try:
        print(f"{name} {md.version(name)}", end=" | ")
    except md.PackageNotFoundError:
        print(f"{name} MISSING", end=" | ")
print()
if torch.cuda.is_available():
    free, total = torch.cuda.mem_get_info()
    print(f"{torch.cuda.get_device_name(0)}: {total / 2**30:.1f} GiB, {free / 2**30:.1f} GiB free, bf16 {torch.cuda.is_bf16_supported()}")
else:
    print("no CUDA device")
EOF
    step "preflight: the bench's imports"
    "$PY" -c "import trainer.cli, trainer.recipes.sft, trainer.recipes.classification, trainer.lineage, trainer.report, sklearn.metrics, matplotlib, yaml, click, train_cpu" \
        || { echo "bench: an import failed (above): nothing was measured"; return 1; }
    part classifier "$T_CLASSIFIER" ${EXTRA[@]+"${EXTRA[@]}"}
    part sft "$T_SFT" ${EXTRA[@]+"${EXTRA[@]}"} ${SFT_EXTRA[@]+"${SFT_EXTRA[@]}"}
    step "results"
    local parts=()
    for name in classifier sft; do
        [ -f "$WORK/$name.json" ] && parts+=("$WORK/$name.json")
    done
    [ ${#parts[@]} -gt 0 ] || { echo "bench: no part produced a result"; return 1; }
    "$PY" bench/train_gpu.py --merge "${parts[@]}" --out "$RESULT" || return 1
    if [ "$DEST" != "$WORK" ]; then
        cp "${parts[@]}" "$DEST/"
    fi
    [ "$RESULT" -ef "$DEST/train_gpu.json" ] || cp "$RESULT" "$DEST/train_gpu.json"
    echo "results: $RESULT${OUT:+ (and \$OUT/train_gpu.json)}"
}

session 2>&1 | tee "$DEST/gpu_session.log"
rc=${PIPESTATUS[0]}
[ "$DEST" = "$WORK" ] || rm -rf "$WORK"
exit "$rc"
