#!/bin/bash
# resumable: eseg ablate skips finished (cell, seed) pairs
set -e
cd "$(dirname "$0")/../../.."

E=${ESEG:-eseg}
D=${DATA:-data/synth-val400}
[ -f $D/.done ] || { $E prepare-data synthetic --out $D --num-train 400 --num-val 400 --size 256x512 && touch $D/.done; }
$E ablate levels --scale lite-s --cell p2-p9 --cell p3-p7 --train --seeds 3 --protocol pilot --recipe reports/ablate/pilot/pilot.yaml --data-root $D --out ${OUT:-runs/pilot}/bn --threads 2 -r 256x256
$E ablate levels --scale lite-s --cell p2-p9 --train --seeds 3 --decoder-norm group --protocol pilot --recipe reports/ablate/pilot/pilot.yaml --data-root $D --out ${OUT:-runs/pilot}/gn --threads 2 -r 256x256
echo PILOT DONE
