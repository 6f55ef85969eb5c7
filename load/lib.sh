# shellcheck shell=bash
# QUICK, SYSTEMS_GIVEN and the flag variables are read by the sourcing script.
# shellcheck disable=SC2034
# Shared by load/bench.sh and load/media.sh (sourced, not run): the common command line, the
# output directory and log, and process control that stops every child by PID on exit.
#
# The sourcing script sets HERE and defines usage() before calling these.

# parse_args "ALLOWED,SYSTEMS" "FLAG ..." "$@"
# Handles --quick, --systems LIST, -h/--help and the boolean flags named in the second
# argument (e.g. "pin" accepts --pin and sets PIN=1). Sets QUICK, SYSTEMS (default:
# $DEFAULT_SYSTEMS if the caller set it, else all allowed), SYSTEMS_GIVEN (1 when --systems
# was passed), SYS_LIST and one 0/1 variable per flag; exits 2 on anything else.
parse_args() {
	local allowed=$1 flags=$2 f s ok
	shift 2
	QUICK=0
	SYSTEMS=${DEFAULT_SYSTEMS:-$allowed}
	SYSTEMS_GIVEN=0
	for f in $flags; do printf -v "${f^^}" '%s' 0; done
	while [ $# -gt 0 ]; do
		case "$1" in
		--quick) QUICK=1 ;;
		--systems) [ $# -ge 2 ] || { echo "--systems needs a list" >&2; exit 2; }; SYSTEMS="$2"; SYSTEMS_GIVEN=1; shift ;;
		--systems=*) SYSTEMS="${1#*=}"; SYSTEMS_GIVEN=1 ;;
		-h | --help) usage; exit 0 ;;
		--*)
			ok=0
			for f in $flags; do
				if [ "$1" = "--$f" ]; then printf -v "${f^^}" '%s' 1; ok=1; fi
			done
			[ "$ok" = 1 ] || { echo "unknown argument: $1 (try --help)" >&2; exit 2; }
			;;
		*) echo "unknown argument: $1 (try --help)" >&2; exit 2 ;;
		esac
		shift
	done
	IFS=',' read -r -a SYS_LIST <<<"$SYSTEMS"
	for s in "${SYS_LIST[@]}"; do
		case ",$allowed," in *",$s,"*) ;; *) echo "unknown system: $s (one of $allowed)" >&2; exit 2 ;; esac
	done
}

# out_dir LOGNAME: OUT=$HERE/out/<timestamp> (made unique), STAMP, and log()/die() that
# append to $OUT/LOGNAME as well as stderr.
out_dir() {
	LOG_FILE_NAME=$1
	STAMP=$(date +%Y%m%d-%H%M%S)
	OUT="$HERE/out/$STAMP"
	[ -e "$OUT" ] && OUT="$OUT-$$"
	mkdir -p "$OUT"
	LOG_FILE="$OUT/$LOG_FILE_NAME"
}
# The log stays where out_dir made it even when a script points OUT at a round's directory.
log() { printf '[%s] %s\n' "$(date +%T)" "$*" | tee -a "$LOG_FILE" >&2; }
die() { log "ERROR: $*"; exit 2; }

# ------------------------------------------------------------ process control
STARTED=() # every PID the script started in the background
ON_EXIT=() # extra clean-up commands, run after the children are stopped

# stop_pid PID: TERM, then KILL after 5 s; then KILL whatever descendants it had (Kamailio's
# workers), which were listed before it was stopped.
stop_pid() {
	local pid=$1 kids i
	[ -n "$pid" ] || return 0
	kill -0 "$pid" 2>/dev/null || return 0
	kids=$(python3 "$HERE/benchlib.py" tree "$pid" 2>/dev/null || true)
	kill -TERM "$pid" 2>/dev/null || true
	for i in $(seq 1 50); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	kill -KILL "$pid" 2>/dev/null || true
	wait "$pid" 2>/dev/null || true
	for i in $kids; do
		[ "$i" = "$pid" ] && continue
		kill -0 "$i" 2>/dev/null && kill -KILL "$i" 2>/dev/null || true
	done
	return 0
}

cleanup() {
	local rc=$? i
	trap - EXIT INT TERM
	for ((i = ${#STARTED[@]} - 1; i >= 0; i--)); do stop_pid "${STARTED[$i]}"; done
	for i in "${ON_EXIT[@]}"; do eval "$i" || true; done
	exit "$rc"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM
