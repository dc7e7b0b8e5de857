# pfnfind.sh - find a page frame to inject a memory error into.
#
# Runs on the lab host with nothing but POSIX sh, dd, od and awk (busybox or GNU/mawk), fed
# to `sh -s -- MODE [options]`. The orchestrator (orchestrator/kernel/pages.py) decides WHERE
# to look from /proc/iomem; this script only reads /proc/kpageflags, /proc/kpagecount and
# /proc/PID/{maps,pagemap}. Every number on the command line and in the output is decimal
# (awk cannot do 64-bit hex arithmetic portably).
#
#   scan --range FROM:TO ... --all BITS --none BITS [--maxcount N] [--limit N] [--avoid PFNS]
#        first pfn in the ranges (in order) whose kpageflags has every --all bit, no --none bit,
#        and whose kpagecount is <= N (default 0: nobody maps it)
#   info --pfn N                      flags and count of one pfn, whatever they are
#   anon [--victim-pid PID]           start a sacrificial process (or use PID) and pick one of
#                                     its present anonymous pages (scan criteria apply)
#   file --dir DIR                    copy `sleep` into DIR, run it, note its text pages, kill
#                                     it: those are now unmapped clean page-cache pages
# Common: --kpageflags P --kpagecount P --proc DIR --page-size N (tests point them at fixtures)
#
# Output: "pfn=N flags=HEX16 count=N" (+ " pid=N" / " dir=PATH"), exit 0; "none scanned=N"
# and exit 3 when nothing matched; exit 2 on a usage error.

KPF=/proc/kpageflags KPC=/proc/kpagecount PROC=/proc PAGE_SIZE=4096
ALL= NONE= MAXCOUNT=0 LIMIT=4194304 AVOID= RANGES= PFN= VICTIM_PID= DIR=
MODE=$1
[ $# -gt 0 ] && shift
while [ $# -gt 0 ]; do
	case $1 in
	--kpageflags) KPF=$2 ;; --kpagecount) KPC=$2 ;; --proc) PROC=$2 ;;
	--page-size) PAGE_SIZE=$2 ;; --all) ALL=$2 ;; --none) NONE=$2 ;;
	--maxcount) MAXCOUNT=$2 ;; --limit) LIMIT=$2 ;; --avoid) AVOID=$2 ;;
	--range) RANGES="$RANGES $2" ;; --pfn) PFN=$2 ;; --victim-pid) VICTIM_PID=$2 ;;
	--dir) DIR=$2 ;;
	*) echo "pfnfind: unknown option $1" >&2; exit 2 ;;
	esac
	shift 2 || { echo "pfnfind: $1 needs a value" >&2; exit 2; }
done
[ -r "$KPF" ] || { echo "pfnfind: cannot read $KPF (root and CONFIG_PROC_PAGE_MONITOR needed)" >&2; exit 2; }

# The scanner: reads kpageflags 512 pfns per 4 KiB block, CHUNK blocks per dd, and stops at
# the first match, so a scan under TCG costs only what it has to. kpagecount is read only for
# pfns whose flags already match. Bits are tested on the 16-digit hex text that od prints.
scan() {
	awk -v kpf="$KPF" -v kpc="$KPC" -v all="$ALL" -v none="$NONE" -v maxcount="$MAXCOUNT" \
		-v limit="$LIMIT" -v avoid="$AVOID" -v ranges="$RANGES" -v extra="$1" '
	function digit(h, pos) { return index("0123456789abcdef", substr(h, pos, 1)) - 1 }
	function bit(h, b) { return int(digit(h, 16 - int(b / 4)) / P2[b % 4]) % 2 }
	function hexnum(h,   i, v) { v = 0; for (i = 1; i <= length(h); i++) v = v * 16 + digit(h, i); return v }
	function wanted(h,   i) {
		for (i = 1; i <= nall; i++) if (!bit(h, ALL[i])) return 0
		for (i = 1; i <= nnone; i++) if (bit(h, NONE[i])) return 0
		return 1
	}
	function one_u64(file, pfn,   cmd, line) {
		cmd = "dd if=" file " bs=8 skip=" sprintf("%.0f", pfn) " count=1 2>/dev/null | od -An -v -tx8"
		line = ""; cmd | getline line; close(cmd); gsub(/[ \t]/, "", line); return line
	}
	BEGIN {
		P2[0] = 1; P2[1] = 2; P2[2] = 4; P2[3] = 8; ZERO = "0000000000000000"; CHUNK = 64
		nall = split(all, ALL, ","); nnone = split(none, NONE, ",")
		navoid = split(avoid, AV, ","); for (i = 1; i <= navoid; i++) AVOIDED[AV[i]] = 1
		nr = split(ranges, R, " "); scanned = 0
		for (r = 1; r <= nr && scanned < limit; r++) {
			split(R[r], AB, ":"); from = AB[1] + 0; to = AB[2] + 0
			for (blk = int(from / 512); blk * 512 < to && scanned < limit; blk += CHUNK) {
				cmd = "dd if=" kpf " bs=4096 skip=" sprintf("%.0f", blk) " count=" CHUNK " 2>/dev/null | od -An -v -tx8"
				pfn = blk * 512; got = 0
				while ((cmd | getline line) > 0) {
					n = split(line, F, " ")
					for (i = 1; i <= n; i++) {
						if (pfn >= from && pfn < to && scanned < limit) {
							scanned++
							key = sprintf("%.0f", pfn)
							if ((nall == 0 || F[i] != ZERO) && wanted(F[i]) && !(key in AVOIDED)) {
								count = one_u64(kpc, pfn)
								if (count != "" && hexnum(count) <= maxcount) {
									printf "pfn=%s flags=%s count=%.0f%s\n", key, F[i], hexnum(count), extra
									close(cmd); found = 1; exit 0
								}
							}
						}
						pfn++; got++
					}
				}
				close(cmd)
				if (got == 0) break
			}
		}
		printf "none scanned=%.0f\n", scanned
		exit 3
	}'
}

# Present pages of process $1: prints the pfn of every present, not swapped page in the maps
# lines that awk program $2 selects (awk variable `path` = $3); at most 64 pages per mapping.
process_pfns() {
	pid=$1
	awk -v path="$3" "$2" "$PROC/$pid/maps" | while read -r start end; do
		first=$(( 0x$start / PAGE_SIZE )); pages=$(( (0x$end - 0x$start) / PAGE_SIZE ))
		[ "$pages" -gt 64 ] && pages=64
		dd if="$PROC/$pid/pagemap" bs=8 skip="$first" count="$pages" 2>/dev/null | od -An -v -tx8
	done | awk '
	function digit(h, pos) { return index("0123456789abcdef", substr(h, pos, 1)) - 1 }
	{ for (i = 1; i <= NF; i++) {
		h = $i; if (digit(h, 1) < 8) continue            # bit 63: present
		if (int(digit(h, 1) / 4) % 2) continue           # bit 62: swapped
		v = digit(h, 3) % 8                              # bits 0-54: pfn
		for (p = 4; p <= 16; p++) v = v * 16 + digit(h, p)
		if (v > 0) printf "%.0f\n", v
	} }'
}

# Scan a list of single pfns (one range each) with the criteria already set.
scan_pfns() {
	RANGES=
	for p in $1; do RANGES="$RANGES $p:$((p + 1))"; done
	[ -n "$RANGES" ] && scan "$2"
}

case $MODE in
scan)
	[ -n "$RANGES" ] || { echo "pfnfind: scan needs --range" >&2; exit 2; }
	scan "" ;;
info)
	[ -n "$PFN" ] || { echo "pfnfind: info needs --pfn" >&2; exit 2; }
	ALL= NONE= MAXCOUNT=1e30 RANGES="$PFN:$((PFN + 1))" scan "" ;;
anon)
	pid=$VICTIM_PID
	if [ -z "$pid" ]; then
		# Dirty a few hundred KiB of heap in a shell that then idles; killing it is the cleanup.
		sh -c 'x=$(head -c 262144 /dev/zero | od -An -v -tx1); while :; do sleep 5; done' \
			</dev/null >/dev/null 2>&1 &
		pid=$!
	fi
	tries=0 max_tries=10
	[ -n "$VICTIM_PID" ] && max_tries=1
	while [ $tries -lt $max_tries ]; do
		# Anonymous mappings: no path, [heap] or [stack]; writable and private.
		pfns=$(process_pfns "$pid" '$2 ~ /^rw.p/ && (NF < 6 || $6 == "[heap]" || $6 == "[stack]") { split($1, a, "-"); print a[1], a[2] }')
		if [ -n "$pfns" ] && scan_pfns "$pfns" " pid=$pid"; then exit 0; fi
		tries=$((tries + 1)); [ $tries -lt $max_tries ] && sleep 1
	done
	[ -z "$VICTIM_PID" ] && kill "$pid" 2>/dev/null
	echo "none scanned=0 (no anonymous LRU page in pid $pid)"; exit 3 ;;
file)
	[ -n "$DIR" ] || { echo "pfnfind: file needs --dir" >&2; exit 2; }
	work="$DIR/.pfnfind-pagecache.$$"
	# A real file to copy: busybox's `command -v` may name the applet, not a path.
	for src in "$(command -v sleep)" /bin/sleep /usr/bin/sleep /bin/busybox; do
		[ -f "$src" ] && break
	done
	# dd with 4 KiB writes, not cp: large writes give large folios (COMPOUND/THP) on ext4.
	if ! { mkdir -p "$work" && dd if="$src" of="$work/sleep" bs=4096 2>/dev/null &&
		chmod 755 "$work/sleep" && sync; }; then
		rm -rf "$work"; echo "none scanned=0 (cannot write an executable copy of $src into $DIR)"; exit 3
	fi
	"$work/sleep" 600 </dev/null >/dev/null 2>&1 &
	pid=$!
	pfns= tries=0
	while [ -z "$pfns" ] && [ $tries -lt 10 ]; do
		sleep 1; tries=$((tries + 1))
		pfns=$(process_pfns "$pid" '$6 == path && $2 ~ /^r/ { split($1, a, "-"); print a[1], a[2] }' "$work/sleep" 2>/dev/null)
	done
	kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null
	if [ -n "$pfns" ] && scan_pfns "$pfns" " dir=$work"; then exit 0; fi
	rm -rf "$work"
	echo "none scanned=0 (no unmapped page-cache page of $work/sleep; noexec or large folios?)"; exit 3 ;;
*)
	echo "pfnfind: mode must be scan, info, anon or file" >&2; exit 2 ;;
esac
