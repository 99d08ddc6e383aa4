# redis_cache: cache query results in Redis from inside PostgreSQL

EXTENSION = redis_cache
EXTVERSION = 1.0

MODULE_big = redis_cache
OBJS = \
	src/redis_cache.o \
	src/guc.o \
	src/connection.o \
	src/keys.o \
	src/commands.o \
	src/version.o \
	src/invalidation.o \
	src/worker.o \
	src/stats.o \
	src/query_format.o \
	src/query_deps.o \
	src/query_cache.o

HEADERS = src/redis_cache.h src/query_format.h

DATA = $(wildcard redis_cache--*.sql)

REGRESS = upgrade basic bad_input degraded invalidation stats query
REGRESS_OPTS = --inputdir=. --load-extension=redis_cache

PG_CPPFLAGS = -I$(srcdir)/src
SHLIB_LINK = -lhiredis

EXTRA_CLEAN = results regression.diffs regression.out

PG_CONFIG ?= pg_config
PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

.PHONY: test demo

# Everything, on a fresh Debian bookworm machine: packages, build, install,
# a temporary PostgreSQL and redis-server, pg_regress and the fault tests.
test:
	bash test/run.sh

# The same embedded stack, showing the extension at work.
demo:
	bash test/demo.sh
