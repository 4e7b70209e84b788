#!/bin/sh
# Run every benchmark in turn, saving each one's table in results/NAME.txt (stderr in NAME.err)
# and the load average before and after in results/run.log. Run it on an idle machine.
set -u
cd "$(dirname "$0")"
mkdir -p results
run() {
    name=$1; shift
    echo "== $(date +%T) $name: $* (load $(cut -d' ' -f1-3 /proc/loadavg))" >> results/run.log
    python "$@" > "results/$name.txt" 2> "results/$name.err"
    echo "== $(date +%T) $name done rc=$? (load $(cut -d' ' -f1-3 /proc/loadavg))" >> results/run.log
}
run scaling bench_scaling.py
run tagging bench_tagging.py
run overhead bench_overhead.py
run overhead_en bench_overhead.py --language en --models base
run fallback bench_fallback.py
run scaling_transcribe bench_scaling.py --minutes 1 5 --transcribe --repeats 1
run gate bench_gate.py --repeats 1  # the sweep: 72 files x 6 rows, ~30-50 min
run faster bench_faster.py
run transformers bench_transformers.py --threads 1 --repeats 5
run transformers_beams5 bench_transformers.py --threads 1 --repeats 3 --num_beams 5
run backends bench_backends.py --repeats 3  # whisperX rows need .venv-whisperx (tests/install.sh)
run live bench_live.py  # ~20 min
run live_30min bench_live.py --minutes 30  # ~25 min
run live_held_out bench_live.py --recording held-out --rows "live tiny.en + gate;live base + gate;baseline tiny.en;baseline base"  # ~35 min
run live_beams bench_live.py --rows "live tiny.en + gate, 3 beams;live base + gate, 3 beams"  # ~10 min
run live_beams_held_out bench_live.py --recording held-out --rows "live tiny.en + gate, 3 beams;live base + gate, 3 beams"  # ~15 min
run live_shifts bench_live.py --shifts  # ~12 min
run live_shifts_tiny bench_live.py --live-shifts --rows "live tiny.en + gate"  # ~12 min
run live_shifts_tiny_held_out bench_live.py --live-shifts --recording held-out --rows "live tiny.en + gate"  # ~20 min
