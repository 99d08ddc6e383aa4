# redis_cache: cache query results in Redis from inside PostgreSQL

EXTENSION = redis_cache
EXTVERSION = 1.8

MODULE_big = redis_cache
OBJS = \
	src/module.o \
	src/command_builder.o \
	src/stats.o \
	src/state_file.o \
	src/keys.o \
	src/guc.o \
	src/fault.o \
	src/local_cache.o \
	src/tls.o \
	src/transport.o \
	src/sentinel.o \
	src/cluster.o \
	src/connection.o \
	src/scripts.o \
	src/families.o \
	src/flush.o \
	src/version.o \
	src/query_tables.o \
	src/replay.o \
	src/worker.o \
	src/tracking.o \
	src/invalidation.o \
	src/query_deps.o \
	src/triggers.o \
	src/query_format.o \
	src/query_rows.o \
	src/query_cache.o \
	src/commands.o \
	src/monitor.o

HEADERS = src/redis_cache.h src/query_format.h

DATA = $(wildcard redis_cache--*.sql)

# Tests (see README, Testing): pg_regress under test/sql and test/expected,
# isolation specs under test/specs, TAP tests in test/t/*.pl with our Perl
# module in test/perl.  `make installcheck` runs all three against the
# installed extension; pg_regress and isolation need a live server with
# redis_cache configured, the TAP tests start their own servers.
REGRESS = upgrade basic bad_input degraded invalidation stats query peers
REGRESS_OPTS = --inputdir=test --load-extension=redis_cache
ISOLATION = commit_registration stale_fill own_writes stampede
ISOLATION_OPTS = --inputdir=test --load-extension=redis_cache
TAP_TESTS = 1
PROVE_TESTS ?= $(wildcard test/t/*.pl)

PG_CPPFLAGS = -I$(srcdir)/src
SHLIB_LINK = -lhiredis -lssl -lcrypto

EXTRA_CLEAN = results regression.diffs regression.out output_iso tmp_check

PG_CONFIG ?= pg_config
PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

# after Makefile.global, which resets it
PROVE_FLAGS += -I ./test/perl

.PHONY: test demo package

# Everything, on a fresh Debian bookworm machine: packages, build, install,
# a temporary PostgreSQL and redis-server for pg_regress and isolation, and
# the TAP tests (which start their own servers).
test:
	bash test/run.sh

# The same embedded stack, showing the extension at work.
demo:
	bash test/demo.sh

# the Debian package (debian/, pg_buildext), built from a clean copy,
# installed and smoke-tested; as root
package:
	bash test/package.sh
