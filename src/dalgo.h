/*
 * dalgo.h
 *		Shared declarations for the dalgo extension: settings, entry points
 *		that one file calls in another, and small version shims.
 *
 * dalgo targets PostgreSQL 15.  Anything that differs between server
 * versions is shimmed here, once, rather than with #if blocks inside
 * functions.
 */
#ifndef DALGO_H
#define DALGO_H

#include "postgres.h"

#include "fmgr.h"
#include "pgtime.h"

#if PG_VERSION_NUM < 150000
#error "dalgo requires PostgreSQL 15 or later"
#endif

/* Schema that holds every dalgo object; the extension is not relocatable. */
#define DALGO_SCHEMA "dalgo"

/* next_run.c */
extern pg_tz *dalgo_lookup_timezone(const char *name);

#endif							/* DALGO_H */
