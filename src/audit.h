/*
 * audit.h
 *		Private declarations of the audit trail: the configuration of an
 *		audit trigger (audit.c) and the writer that puts its rows into
 *		dalgo.audit_logs (audit_writer.c).  Only those two files include it.
 */
#ifndef DALGO_AUDIT_H
#define DALGO_AUDIT_H

#include "dalgo.h"

#include "access/heapam.h"
#include "executor/spi.h"
#include "nodes/execnodes.h"

/* Rows written by one INSERT. */
#define AUDIT_BATCH_ROWS 1000

typedef struct AuditAttr
{
	AttrNumber	attnum;
	char	   *name;
	int			namelen;
	int16		typlen;
	bool		typbyval;
	bool		excluded;
	bool		ignored;		/* not diffed on UPDATE */
	Oid			typid;			/* converted directly when a common scalar type */
	FmgrInfo	to_jsonb;		/* to_jsonb() bound to this column's type, for the rest */
} AuditAttr;

/*
 * The configuration of one audit trigger, allocated in its own context
 * (cxt, a child of CacheMemoryContext).  An invalidated configuration stays
 * usable by the firings under way and is freed at the next safe point.
 */
typedef struct AuditConfig
{
	MemoryContext cxt;
	bool		valid;
	Oid			relid;
	Oid			nspid;
	char	   *resource_type;
	int			nattrs;
	AuditAttr  *attrs;
	AttrNumber	org_attnum;		/* 0: none */
	AttrNumber	uuid_pk_attnum; /* 0: key is not one uuid column */
	int			npk;
	AttrNumber	pk_attnums[INDEX_MAX_KEYS];
	struct AuditConfig *next_retired;
} AuditConfig;

/* Columns of dalgo.audit_logs that the trigger fills, in table order. */
enum
{
	AL_ID,
	AL_ORGANIZATION_ID,
	AL_USER_ID,
	AL_ACTION,
	AL_RESOURCE_TYPE,
	AL_RESOURCE_ID,
	AL_DETAILS,
	AL_IP_ADDRESS,
	AL_USER_AGENT,
	AL_CREATED_AT,
	AL_UPDATED_AT,
	AL_NCOLUMNS
};

/*
 * Where one firing's audit rows go.  Queued rows live in batchcxt, which is
 * reset after each batch is written.  direct: audit_logs has its known
 * shape and rows go to the heap and indexes; otherwise through a prepared
 * INSERT run as audit_logs' owner.
 */
typedef struct AuditSink
{
	AuditConfig *cfg;
	MemoryContext cxt;			/* the firing's context: slots, state */
	MemoryContext batchcxt;		/* the queued rows' values */
	Relation	rel;
	bool		direct;
	bool		citus;			/* audit_logs is a Citus table */
	/* direct writer */
	EState	   *estate;
	ResultRelInfo *rri;
	BulkInsertState bistate;
	TupleTableSlot **slots;		/* AUDIT_BATCH_ROWS, made as needed */
	/* INSERT writer */
	SPIPlanPtr	plan;			/* prepared at the first flush */
	/* the queue */
	Datum		common[AL_NCOLUMNS];	/* values shared by every row */
	bool		common_null[AL_NCOLUMNS];
	int			n;
	int			capacity;		/* rows values and nulls have room for */
	Datum		(*values)[AL_NCOLUMNS];
	bool		(*nulls)[AL_NCOLUMNS];
} AuditSink;

/* audit.c: the request settings */
extern char *dalgo_client_ip;
extern char *dalgo_user_agent;

/* audit_writer.c */
extern void dalgo_audit_open_sink(AuditSink *sink, AuditConfig *cfg, const char *action);
extern void dalgo_audit_add_row(AuditSink *sink, TupleTableSlot *row, Jsonb *details);
extern void dalgo_audit_close_sink(AuditSink *sink);

#endif							/* DALGO_AUDIT_H */
