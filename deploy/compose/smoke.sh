#!/usr/bin/env bash
# Compose smoke test of issue [6]: builds the images, generates a federation of $ZONES zones
# (default 3) and a global of $GLOBAL_NODES nodes (default 3, a Raft cluster), brings it up, waits for every zone online, sends a cross-zone request from
# zone-1's frontend (answered by another zone), then (with 3 zones or more) stops zone-2's
# ingress and shows the traffic failing over to the other zones. `docker-compose down -v` runs in
# a trap, also on failure. Prints the times (up -> zones online -> first cross-zone answer ->
# failover) and the image sizes.
#
#   deploy/compose/smoke.sh
#   ZONES=10 SKIP_BUILD=1 deploy/compose/smoke.sh
# Variables: ZONES, GLOBAL_NODES (1 or 3), TAG (image tag, default smoke), PROFILE (release), SKIP_BUILD=1 (images as
# they are; the images are assembled anyway), DEADLINE (seconds per wait, default 180), COMPOSE (command, default: docker-compose
# if present, else `docker compose`), KEEP=1 (leave the project up for inspection),
# STOP_TIMEOUT (seconds `stop` gives the ingress to drain before SIGKILL, default 5; the
# project's own stop_grace_period is 30 s), REMOVE_IMAGES=1 (remove the images at the end, as CI
# does).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
zones=${ZONES:-3}
global_nodes=${GLOBAL_NODES:-3}
tag=${TAG:-smoke}
profile=${PROFILE:-release}
deadline=${DEADLINE:-180}
target=${CARGO_TARGET_DIR:-$repo/target}
meshctl="$target/$profile/meshctl"
if [[ -n "${COMPOSE:-}" ]]; then
    read -r -a compose <<<"$COMPOSE"
elif command -v docker-compose >/dev/null; then
    compose=(docker-compose)
else
    compose=(docker compose)
fi

if [[ $zones -lt 2 ]]; then
    echo "smoke: ZONES must be at least 2 (the request must cross zones)" >&2
    exit 2
fi

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
log() { printf '[smoke %6.1fs] %s\n' "$(awk -v a="$start" -v b="$(now)" 'BEGIN { print b - a }')" "$*"; }
start=$(now)

log "building images (tag $tag, $profile binaries)"
t_build=$(now)
# SKIP_BUILD=1 skips cargo (the binaries as they are); the images are assembled either way.
PROFILE=$profile TAG=$tag SKIP_CARGO=${SKIP_BUILD:-} "$repo/deploy/build-images.sh" 2>/dev/null
log "images built in $(since "$t_build")s"

dir=$(mktemp -d "${TMPDIR:-/tmp}/meridian-smoke.XXXXXX")
project="meridian-smoke-$$"
dc() { (cd "$dir" && "${compose[@]}" -p "$project" "$@"); }
# The script's own stdout and stderr: a signal can run the traps while a command's output is
# redirected (`dc up -d >up.log`), and the cleanup's messages must not go there.
exec 3>&1 4>&2
cleanup() {
    local rc=$?
    if [[ -n "${KEEP:-}" ]]; then
        echo "KEEP: project $project left up in $dir" >&3
        return
    fi
    if [[ $rc -ne 0 ]]; then
        echo "--- smoke failed (exit $rc); last logs:" >&4
        dc logs --tail 15 >&4 2>/dev/null || true
    fi
    dc down -v --remove-orphans >/dev/null 2>&1 || true
    # `down` can leave containers or networks behind on a loaded machine (seen with 10 zones);
    # the networks' fixed subnets would then block the next run: remove what the project labels.
    local label="label=com.docker.compose.project=$project"
    docker ps -aq --filter "$label" | xargs -r docker rm -f -v >/dev/null 2>&1 || true
    docker network ls -q --filter "$label" | xargs -r docker network rm >/dev/null 2>&1 || true
    if [[ -n $(docker network ls -q --filter "$label") ]]; then
        echo "smoke: networks of $project are left: docker network ls --filter $label" >&4
    fi
    rm -rf "$dir"
    if [[ -n "${REMOVE_IMAGES:-}" ]]; then
        for bin in global-cp zone-cp zone-proxy demo-app meshctl fault-relay; do
            docker rmi "meridian/$bin:$tag" >/dev/null 2>&1 || true
        done
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The project's subnets are fixed (proxies' addresses are): take a /16 no network here uses
# (a leftover network of an interrupted run keeps its subnet).
used=$(docker network ls -q | xargs -r docker network inspect -f '{{range .IPAM.Config}}{{.Subnet}} {{end}}')
prefix=""
for second in $(seq 231 250); do
    if ! grep -q "10\.$second\." <<<"$used"; then prefix="10.$second"; break; fi
done
[[ -n $prefix ]] || { echo "smoke: no free 10.231-250.0.0/16 for the project's networks" >&2; exit 1; }
log "generating $zones zone(s), $global_nodes global node(s) in $dir (subnets $prefix.0.0/16)"
"$meshctl" generate compose --zones "$zones" --global-nodes "$global_nodes" --out "$dir" \
    --image-tag "$tag" --subnet-prefix "$prefix" >/dev/null

log "docker-compose up -d"
t_up=$(now)
dc up -d >"$dir/up.log" 2>&1 || { cat "$dir/up.log" >&2; exit 1; }
up_returned=$(since "$t_up")
log "up -d returned after ${up_returned}s"

if [[ $global_nodes -eq 1 ]]; then
    globals=(global)
else
    globals=()
    for ((i = 1; i <= global_nodes; i++)); do globals+=("global-$i"); done
fi
apis=()
for g in "${globals[@]}"; do apis+=("http://$(dc port "$g" 5681)"); done

# Waits (up to $deadline s) until "$@" succeeds.
wait_for() {
    local what=$1 t0
    shift
    t0=$(now)
    until "$@"; do
        if awk -v a="$t0" -v b="$(now)" -v d="$deadline" 'BEGIN { exit !(b - a > d) }'; then
            echo "smoke: $what not reached within ${deadline}s" >&2
            return 1
        fi
        sleep 0.2
    done
}

# A node lists only the zones connected to it (docs/raft.md, "Left"): a zone is online when one
# of the nodes says so.
all_online() {
    local online api
    online=$(for api in "${apis[@]}"; do
        "$meshctl" --config "$dir/secrets/meshctl.yaml" --api-url "$api" inspect zones 2>/dev/null |
            awk '$2 == "online" { print $1 }'
    done | sort -u | wc -l)
    [[ $online -eq $zones ]]
}
wait_for "all $zones zones online" all_online
zones_online=$(since "$t_up")
log "all $zones zones online ${zones_online}s after up"

frontend=$(dc ps -q frontend-zone-1-app)
# One short burst of requests from zone-1's frontend through its sidecar's outbound to backend;
# prints the JSON report.
call() {
    docker exec "$frontend" /usr/local/bin/demo-app call --target "http://127.0.0.1:10080/" \
        --rate "${1:-20}" --duration "${2:-1s}" --timeout 1s --json 2>/dev/null | tail -1
}
answered_by_other_zone() {
    local report
    report=$(call 5 200ms) || return 1
    python3 -c 'import json,sys; r=json.loads(sys.argv[1]); z=r["zones"]; sys.exit(0 if r["ok"] > 0 and any(k != "zone-1" for k in z) else 1)' "$report"
}
wait_for "a cross-zone answer" answered_by_other_zone
first_answer=$(since "$t_up")
log "first cross-zone answer ${first_answer}s after up"
report=$(call 20 2s)
log "2 s at 20 req/s from frontend-zone-1: $(python3 -c 'import json,sys; r=json.loads(sys.argv[1]); print("ok", r["ok"], "failed", r["failed"], "zones", r["zones"])' "$report")"

failover=""
if [[ $zones -ge 3 ]]; then
    log "stopping zone-2-ingress"
    t_stop=$(now)
    dc stop -t "${STOP_TIMEOUT:-5}" zone-2-ingress >/dev/null 2>&1
    stop_took=$(since "$t_stop")
    log "zone-2-ingress stopped (docker-compose stop took ${stop_took}s)"
    only_other_zones() {
        local report
        report=$(call 20 1s) || return 1
        python3 -c 'import json,sys; r=json.loads(sys.argv[1]); z=r["zones"]; sys.exit(0 if r["failed"] == 0 and r["ok"] > 0 and "zone-2" not in z else 1)' "$report"
    }
    wait_for "failover away from zone-2" only_other_zones
    failover=$(since "$t_stop")
    report=$(call 20 2s)
    log "failed over ${failover}s after the stop; then 2 s at 20 req/s: $(python3 -c 'import json,sys; r=json.loads(sys.argv[1]); print("ok", r["ok"], "failed", r["failed"], "zones", r["zones"])' "$report")"
fi

echo
echo "zones: $zones, global nodes: $global_nodes"
echo "up -d returned:        ${up_returned}s"
echo "all zones online:      ${zones_online}s after up"
echo "first cross-zone answer: ${first_answer}s after up"
if [[ -n "$failover" ]]; then
    echo "failover: ${failover}s from \`stop zone-2-ingress\` (which took ${stop_took}s) to 1 s of answers from other zones only, no errors"
fi
echo
log "done"
