#!/usr/bin/env bash
# Two cold builds of a spec in fresh stores publish byte-identical stage files and the same lockfile, and
# `run --frozen` with the first build's lockfile passes on a third fresh store.
#   bash bench/cold_rebuilds.sh [SPEC] [WORKDIR]     (default: pipelines/yolov5n_int8.yaml on the fixtures)
# The manifest and the version's report hold timings and are left out of the comparison.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
SPEC="$(realpath "${1:-$REPO/pipelines/yolov5n_int8.yaml}")"
WORK="${2:-$(mktemp -d /tmp/cold-rebuilds-XXXX)}"
export YOLOV5N_WEIGHTS="${YOLOV5N_WEIGHTS:-$REPO/../shared/fixtures/weights/yolov5n.pt}"
export COCO128="${COCO128:-$REPO/../shared/fixtures/datasets/coco128}"
mkdir -p "$WORK" && cp "$SPEC" "$WORK/spec.yaml" && cd "$WORK"
NAME="$(python -c "import yaml,sys; print(yaml.safe_load(open('spec.yaml'))['name'])")"
for i in 1 2; do
  /usr/bin/time -f "cold build $i: %e s" python -m convert --store "s$i" --artifacts "a$i" run spec.yaml --no-progress
  cp spec.lock "lock$i"
done
cmp lock1 lock2 && echo "lockfiles identical"
diff -r "a1/$NAME/latest" "a2/$NAME/latest" -x manifest.json -x 'report.*' -x 'report-*.png' \
  && echo "published stage files identical"
cp lock1 spec.lock
/usr/bin/time -f "frozen cold build: %e s" python -m convert --store s3 --artifacts a3 run spec.yaml --frozen --no-progress \
  && echo "--frozen with the first lockfile passed on a fresh store"
