#!/usr/bin/env bash
# test/package.sh: build the Debian package postgresql-15-redis-cache from a
# clean copy of the tree, install it, check its files and run a smoke test
# against it (debian/tests/smoke: a temporary PostgreSQL cluster preloading
# the packaged library and a redis-server on loopback; it also runs every
# query of monitoring/postgres_exporter.yaml).  Ends with "package: ok";
# the exit status is non-zero on any failure.
#
# Run as root on Debian bookworm (it installs the missing packages and the
# .deb):  bash test/package.sh
#
#   RC_SKIP_APT=1          do not install missing Debian packages
#   RC_PKG_DIR=DIR         build under DIR (default: a new /tmp/pkgbuild.XXXXXX)
#   RC_PKG_SOURCE=1        also build the source package (orig tarball, .dsc)
#   RC_PKG_INSTALLCHECK=1  also run debian/tests/installcheck (pg_regress and
#                          isolation suites against the installed package)
#   RC_PKG_REMOVE=1        purge the package again at the end
#
# The build tree is the repository's files (git ls-files: tracked and
# untracked but not ignored), so nothing of a previous build in the work
# tree is packaged, and nothing is written into the work tree.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
PGVERSION=15
PKG=postgresql-$PGVERSION-redis-cache
SHAREDIR=/usr/share/postgresql/$PGVERSION
LIBDIR=/usr/lib/postgresql/$PGVERSION/lib

fail() { echo "package: FAILED: $*" >&2; exit 1; }
step() { echo "== $*"; }

[ "$(id -u)" = 0 ] || fail "run as root (installs packages and the .deb)"

# --- packages -------------------------------------------------------------
NEEDED="dpkg-dev debhelper build-essential postgresql-server-dev-all
	postgresql-15 libhiredis-dev libssl-dev redis-server redis-tools
	python3 python3-yaml procps"
if [ -z "${RC_SKIP_APT:-}" ]; then
	missing=""
	for p in $NEEDED; do
		dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
	done
	if [ -n "$missing" ]; then
		step "installing:$missing"
		apt-get update -qq
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
	fi
fi

# --- versions agree ---------------------------------------------------------
sqlver=$(sed -n "s/^default_version *= *'\(.*\)'/\1/p" redis_cache.control)
[ -n "$sqlver" ] || fail "no default_version in redis_cache.control"
upver=$sqlver
case $upver in *.*.*) ;; *) upver=$upver.0 ;; esac
debver=$(dpkg-parsechangelog -l debian/changelog -S Version)
metaver=$(python3 -c 'import json; print(json.load(open("META.json"))["version"])')
metaprov=$(python3 -c 'import json; p = json.load(open("META.json"))["provides"]["redis_cache"]; print(p["version"], p["file"])')
[ "${debver%-*}" = "$upver" ] ||
	fail "debian/changelog has $debver, redis_cache.control default_version $sqlver (want $upver-N)"
[ "$metaver" = "$upver" ] || fail "META.json version $metaver, want $upver"
[ "$metaprov" = "$upver redis_cache--$sqlver.sql" ] ||
	fail "META.json provides '$metaprov', want '$upver redis_cache--$sqlver.sql'"
[ -f "redis_cache--$sqlver.sql" ] || fail "redis_cache--$sqlver.sql is missing"
echo "version $upver (SQL $sqlver), Debian $debver"

# --- clean copy of the tree -------------------------------------------------
BUILD_ROOT=${RC_PKG_DIR:-$(mktemp -d /tmp/pkgbuild.XXXXXX)}
TREE=$BUILD_ROOT/redis-cache-$upver
rm -rf "$TREE"
mkdir -p "$TREE"
step "copying the tree to $TREE"
if git -C "$ROOT" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
	# tracked and untracked-but-not-ignored files that exist
	git -C "$ROOT" ls-files -z --cached --others --exclude-standard |
		while IFS= read -r -d '' f; do [ -f "$f" ] && printf '%s\0' "$f"; done |
		tar -C "$ROOT" --null -T - -cf - | tar -C "$TREE" -xf -
else
	tar -C "$ROOT" --exclude=.git --exclude='*.o' --exclude='*.so' --exclude='*.bc' \
		--exclude=results --exclude=tmp_check --exclude=output_iso -cf - . |
		tar -C "$TREE" -xf -
fi

# --- build ------------------------------------------------------------------
cd "$TREE"
dpkg-checkbuilddeps || fail "build dependencies missing (see above)"
export DEB_BUILD_OPTIONS="nocheck parallel=$(nproc) ${DEB_BUILD_OPTIONS:-}"
if [ -n "${RC_PKG_SOURCE:-}" ]; then
	tar -C "$BUILD_ROOT" --exclude="redis-cache-$upver/debian" \
		-czf "$BUILD_ROOT/redis-cache_$upver.orig.tar.gz" "redis-cache-$upver"
	build_opts="-us -uc"
else
	build_opts="-us -uc -b"
fi
step "dpkg-buildpackage $build_opts (log: $BUILD_ROOT/build.log)"
if ! dpkg-buildpackage $build_opts >"$BUILD_ROOT/build.log" 2>&1; then
	tail -n 60 "$BUILD_ROOT/build.log"
	fail "dpkg-buildpackage"
fi
grep -E '^(dpkg-deb: building|dpkg-source: info: building)' "$BUILD_ROOT/build.log" || true

arch=$(dpkg-architecture -qDEB_HOST_ARCH)
DEB=$BUILD_ROOT/${PKG}_${debver}_$arch.deb
[ -f "$DEB" ] || fail "$DEB was not built"
# the build ran in the copy only; the package must not carry build leftovers
if dpkg-deb -c "$DEB" | grep -E '\.o$|/(results|tmp_check|debian)/' >/dev/null; then
	fail "$DEB contains build leftovers"
fi

# --- install ----------------------------------------------------------------
step "installing $(basename "$DEB")"
cd "$BUILD_ROOT"
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --reinstall --allow-downgrades "./$(basename "$DEB")" >"$BUILD_ROOT/install.log" 2>&1 ||
	{ cat "$BUILD_ROOT/install.log"; fail "apt-get install ./$(basename "$DEB")"; }
[ "$(dpkg-query -W -f='${Status} ${Version}' "$PKG")" = "install ok installed $debver" ] ||
	fail "$PKG $debver is not installed"

# --- installed files --------------------------------------------------------
check_file() {
	[ -f "$1" ] || fail "missing $1"
	dpkg -S "$1" 2>/dev/null | grep -q "^$PKG:" || fail "$1 is not owned by $PKG"
	echo "ok - $1"
}
check_file "$SHAREDIR/extension/redis_cache.control"
check_file "$LIBDIR/redis_cache.so"
for f in "$TREE"/redis_cache--*.sql; do
	check_file "$SHAREDIR/extension/$(basename "$f")"
done
n_sql=$(dpkg -L "$PKG" | grep -c "^$SHAREDIR/extension/redis_cache--.*\.sql$")
[ "$n_sql" = "$(ls "$TREE"/redis_cache--*.sql | wc -l)" ] || fail "$n_sql SQL scripts packaged"
cmp -s "$TREE/redis_cache.control" "$SHAREDIR/extension/redis_cache.control" ||
	fail "installed redis_cache.control differs from the tree's"
if [ -d "$LIBDIR/bitcode/redis_cache" ]; then
	check_file "$LIBDIR/bitcode/redis_cache.index.bc"
fi
check_file "/usr/share/doc/$PKG/README.md.gz"
check_file "/usr/share/doc/$PKG/changelog.gz"   # CHANGELOG.md
check_file "/usr/share/doc/$PKG/copyright"
check_file "/usr/share/doc/$PKG/examples/postgres_exporter.yaml"
if ldd "$LIBDIR/redis_cache.so" | grep -q 'not found'; then
	ldd "$LIBDIR/redis_cache.so"
	fail "unresolved libraries"
fi
depends=$(dpkg-query -W -f='${Depends}' "$PKG")
for d in postgresql-$PGVERSION libhiredis libssl3; do
	case ", $depends" in *", $d"*) ;; *) fail "Depends lacks $d: $depends" ;; esac
done
echo "ok - Depends: $depends"

# --- smoke test against the package -----------------------------------------
step "smoke test (debian/tests/smoke)"
bash "$TREE/debian/tests/smoke"

if [ -n "${RC_PKG_INSTALLCHECK:-}" ]; then
	step "installcheck (debian/tests/installcheck)"
	(cd "$TREE" && bash debian/tests/installcheck)
fi

if [ -n "${RC_PKG_REMOVE:-}" ]; then
	step "purging $PKG"
	DEBIAN_FRONTEND=noninteractive apt-get purge -y -qq "$PKG" >/dev/null
fi

rm -rf "$TREE"
size=$(stat -c %s "$DEB")
echo "built $DEB ($size bytes, $(( (size + 1023) / 1024 )) KiB)"
echo "package: ok"
