set -e
cd /tmp/i12
export OPENBLAS_NUM_THREADS=1
PY=/work/venv-main/bin/python; S=/work/wt/perf/bench/dev/prof_i12.py
for spec in "100 64 256 fwd" "100 12 200 fwd" "100 1 1024 fwd" "100 16 512 fwd" "100 16 256 fwdbwd"; do
  set -- $spec; tag="T$1_B$2_H$3_$4"
  $PY $S $1 $2 $3 $4 2 > plain_$tag.txt
  perf record -F 1999 -e cpu-clock -o perf_$tag.data -- $PY $S $1 $2 $3 $4 4 > rec_$tag.txt 2>&1
  perf report -i perf_$tag.data --no-children --sort sym --stdio 2>/dev/null | grep -v "^$" | head -45 > report_$tag.txt
  perf report -i perf_$tag.data --no-children --sort dso --stdio 2>/dev/null | grep -v "^#" | grep -v "^$" | head -12 > dso_$tag.txt
  echo "== $tag"; cat plain_$tag.txt; grep -v perf rec_$tag.txt; sed -n '/Samples/p' report_$tag.txt; grep "%" report_$tag.txt | head -14
done
