/*
 * uuid_v7.c
 *		Time-ordered uuids (RFC 9562 version 7): a 48-bit Unix time in
 *		milliseconds, then a 12-bit counter, then 62 random bits.
 *
 * Audit rows get these ids so that the primary-key index grows at its
 * right edge and ids sort by time.  Within one backend the ids are strictly
 * increasing: a burst in one millisecond advances the counter, and the
 * counter overflowing borrows the next millisecond.
 */
#include "dalgo.h"

#include "common/pg_prng.h"
#include "miscadmin.h"
#include "utils/timestamp.h"

PG_FUNCTION_INFO_V1(dalgo_uuid_v7_sql);

static pg_prng_state uuid_prng;
static bool uuid_prng_seeded = false;
static int64 last_unix_ms = 0;
static uint32 last_counter = 0;

/* Fill *result with a new version-7 uuid. */
void
dalgo_uuid_v7(pg_uuid_t *result)
{
	TimestampTz now = GetCurrentTimestamp();
	int64		unix_ms = now / 1000 +
		(int64) (POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE) * SECS_PER_DAY * 1000;
	uint64		rand_b;
	uint32		counter;

	if (!uuid_prng_seeded)
	{
		if (!pg_prng_strong_seed(&uuid_prng))
			pg_prng_seed(&uuid_prng, (uint64) MyProcPid ^ (uint64) now);
		uuid_prng_seeded = true;
	}
	rand_b = pg_prng_uint64(&uuid_prng);

	if (unix_ms > last_unix_ms)
		counter = (uint32) (pg_prng_uint64(&uuid_prng) & 0x3FF);	/* leaves headroom */
	else
	{
		unix_ms = last_unix_ms;
		counter = last_counter + 1;
		if (counter > 0xFFF)
		{
			unix_ms++;
			counter = 0;
		}
	}
	last_unix_ms = unix_ms;
	last_counter = counter;

	for (int i = 0; i < 6; i++)
		result->data[i] = (unsigned char) (unix_ms >> (8 * (5 - i)));
	result->data[6] = (unsigned char) (0x70 | ((counter >> 8) & 0x0F));
	result->data[7] = (unsigned char) (counter & 0xFF);
	result->data[8] = (unsigned char) (0x80 | ((rand_b >> 56) & 0x3F));
	for (int i = 9; i < 16; i++)
		result->data[i] = (unsigned char) (rand_b >> (8 * (15 - i)));
}

/* SQL: dalgo.uuid_v7(): a new time-ordered uuid. */
Datum
dalgo_uuid_v7_sql(PG_FUNCTION_ARGS)
{
	pg_uuid_t  *result = palloc(sizeof(pg_uuid_t));

	dalgo_uuid_v7(result);
	PG_RETURN_UUID_P(result);
}
