/*
 * http.c
 *		google_sheets and api sources: fetched over HTTP with libcurl, in the
 *		run workers only (run_worker.c), into a staging table of the
 *		organization's warehouse that dalgo_internal.finish_sync() then swaps
 *		into place.
 *
 * Safety.  Every connection is checked after DNS resolution, on the address
 * actually connected to (CURLOPT_OPENSOCKETFUNCTION): with
 * dalgo.http_allow_private off, loopback, private, shared (CGNAT),
 * link-local (cloud metadata), unique-local, unspecified, multicast and
 * reserved addresses, and IPv6 forms that embed them, are refused unless
 * the URL's host is listed in dalgo.http_allow_hosts.  Plain http is
 * allowed only to listed hosts.  Redirects are followed here, not by curl,
 * at most 5, each hop checked like the first; credentials go only to the
 * source's own host.  Proxies from the environment are never used.
 * Responses are bounded by dalgo.http_max_bytes and dalgo.http_timeout;
 * 429, 5xx and connection errors are retried dalgo.http_retries times with
 * exponential backoff, honouring Retry-After.
 *
 * Credentials come only from dalgo_internal.source_credentials(); they go
 * into request headers and nowhere else: messages name a URL by scheme,
 * host, port and path only (no user info, no query).
 *
 * Memory.  One response (a page) is held and parsed at a time, in a memory
 * context reset per page; rows are written straight into the staging table
 * (heap inserts with a bulk-insert state), each in a per-row context, so
 * memory does not grow with the number of pages or rows.
 */
#include "dalgo.h"

#include <ctype.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <curl/curl.h>

#include "access/heapam.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "common/base64.h"
#include "common/jsonapi.h"
#include "executor/spi.h"
#include "executor/tuptable.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "storage/latch.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/inet.h"
#include "utils/jsonfuncs.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/varlena.h"
#include "utils/wait_event.h"

PG_FUNCTION_INFO_V1(dalgo_http_address_allowed);
PG_FUNCTION_INFO_V1(dalgo_fetch_http_source);

#define HTTP_MAX_REDIRECTS 5
#define HTTP_DEFAULT_MAX_PAGES 1000
#define HTTP_PROGRESS_INTERVAL_MS 200
#define SINK_BATCH 1000			/* rows per multi-insert, as COPY */
#define SINK_BATCH_BYTES 65536

/* Settings (all superuser-only). */
static int	http_timeout = 60;
static int	http_max_bytes = 256 * 1024 * 1024;
static int	http_retries = 3;
static char *http_allow_hosts = NULL;
static bool http_allow_private = false;
static char *google_sheets_url = NULL;

/* ---------------------------------------------------------------------------
 * Settings and the address policy
 * ---------------------------------------------------------------------------
 */

/* Check hook: dalgo.http_allow_hosts must be a list of names or addresses. */
static bool
check_allow_hosts(char **newval, void **extra, GucSource source)
{
	char	   *copy = pstrdup(*newval);
	List	   *items;
	bool		ok = SplitGUCList(copy, ',', &items);

	list_free(items);
	pfree(copy);
	if (!ok)
		GUC_check_errdetail("List syntax is invalid.");
	return ok;
}

/* Check hook: dalgo.google_sheets_url must be an http or https URL. */
static bool
check_sheets_url(char **newval, void **extra, GucSource source)
{
	if (pg_strncasecmp(*newval, "https://", 8) != 0 && pg_strncasecmp(*newval, "http://", 7) != 0)
	{
		GUC_check_errdetail("dalgo.google_sheets_url must start with https:// (or http:// for a listed host).");
		return false;
	}
	return true;
}

/* Define the HTTP settings. */
void
dalgo_http_init(void)
{
	curl_global_init(CURL_GLOBAL_ALL);
	DefineCustomIntVariable("dalgo.http_timeout",
							"Time limit of one HTTP request of a source sync.",
							NULL, &http_timeout, 60, 1, 86400, PGC_SUSET, GUC_UNIT_S,
							NULL, NULL, NULL);
	DefineCustomIntVariable("dalgo.http_max_bytes",
							"Largest HTTP response body a source sync accepts.",
							NULL, &http_max_bytes, 256 * 1024 * 1024, 1024, MaxAllocSize - 1,
							PGC_SUSET, GUC_UNIT_BYTE, NULL, NULL, NULL);
	DefineCustomIntVariable("dalgo.http_retries",
							"Retries of an HTTP request after 429, 5xx or a connection error.",
							NULL, &http_retries, 3, 0, 10, PGC_SUSET, 0, NULL, NULL, NULL);
	DefineCustomStringVariable("dalgo.http_allow_hosts",
							   "Hosts (names or addresses) a source may reach even when private, and over plain http.",
							   NULL, &http_allow_hosts, "", PGC_SUSET, GUC_LIST_INPUT,
							   check_allow_hosts, NULL, NULL);
	DefineCustomBoolVariable("dalgo.http_allow_private",
							 "Allow sources to reach loopback, private, link-local and unique-local addresses.",
							 NULL, &http_allow_private, false, PGC_SUSET, 0, NULL, NULL, NULL);
	DefineCustomStringVariable("dalgo.google_sheets_url",
							   "Base URL of the Google Sheets API.",
							   NULL, &google_sheets_url, "https://sheets.googleapis.com", PGC_SUSET, 0,
							   check_sheets_url, NULL, NULL);
}

/* Is an IPv4 address (4 bytes, network order) public? */
static bool
ipv4_public(const unsigned char *a)
{
	static const struct
	{
		uint32		net;
		int			bits;
	}			blocked[] =
	{
		{0x00000000, 8},		/* "this network", unspecified */
		{0x0A000000, 8},		/* private */
		{0x64400000, 10},		/* shared address space (CGNAT) */
		{0x7F000000, 8},		/* loopback */
		{0xA9FE0000, 16},		/* link-local, cloud metadata */
		{0xAC100000, 12},		/* private */
		{0xC0000000, 24},		/* IETF protocol assignments */
		{0xC0000200, 24},		/* documentation */
		{0xC0A80000, 16},		/* private */
		{0xC6120000, 15},		/* benchmarking */
		{0xC6336400, 24},		/* documentation */
		{0xCB007100, 24},		/* documentation */
		{0xE0000000, 4},		/* multicast */
		{0xF0000000, 4},		/* reserved, broadcast */
	};
	uint32		x = ((uint32) a[0] << 24) | ((uint32) a[1] << 16) | ((uint32) a[2] << 8) | a[3];

	for (int i = 0; i < (int) lengthof(blocked); i++)
	{
		uint32		mask = ~(uint32) 0 << (32 - blocked[i].bits);

		if ((x & mask) == blocked[i].net)
			return false;
	}
	return true;
}

/* Is an IPv6 address (16 bytes) public?  Forms that embed IPv4 are judged by it. */
static bool
ipv6_public(const unsigned char *a)
{
	static const unsigned char zero[12] = {0};

	if (memcmp(a, zero, 10) == 0 && a[10] == 0xff && a[11] == 0xff)
		return ipv4_public(a + 12);		/* ::ffff:0:0/96, IPv4-mapped */
	if (memcmp(a, zero, 12) == 0)
		return false;			/* ::, ::1, IPv4-compatible */
	if (a[0] == 0x00 && a[1] == 0x64 && a[2] == 0xff && a[3] == 0x9b)
	{
		if (memcmp(a + 4, zero, 8) == 0)
			return ipv4_public(a + 12); /* 64:ff9b::/96, NAT64 */
		return false;			/* 64:ff9b:1::/48, local NAT64 */
	}
	if ((a[0] & 0xfe) == 0xfc)
		return false;			/* fc00::/7, unique-local */
	if (a[0] == 0xfe && (a[1] & 0xc0) == 0x80)
		return false;			/* fe80::/10, link-local */
	if (a[0] == 0xfe && (a[1] & 0xc0) == 0xc0)
		return false;			/* fec0::/10, site-local */
	if (a[0] == 0xff)
		return false;			/* multicast */
	if (a[0] == 0x20 && a[1] == 0x01 && a[2] == 0x0d && a[3] == 0xb8)
		return false;			/* 2001:db8::/32, documentation */
	if (a[0] == 0x20 && a[1] == 0x01 && a[2] == 0x00 && a[3] == 0x00)
		return false;			/* 2001::/32, Teredo (hides the address) */
	if (a[0] == 0x20 && a[1] == 0x02)
		return ipv4_public(a + 2);	/* 2002::/16, 6to4 */
	return true;
}

/* Strip one pair of brackets around an IPv6 literal, in place. */
static char *
strip_brackets(char *host)
{
	size_t		len = strlen(host);

	if (len >= 2 && host[0] == '[' && host[len - 1] == ']')
	{
		host[len - 1] = '\0';
		return host + 1;
	}
	return host;
}

/* Is a host (a URL's host, or an address as text) listed in dalgo.http_allow_hosts? */
static bool
host_listed(const char *host)
{
	char	   *copy;
	char	   *h;
	List	   *items;
	ListCell   *lc;
	bool		found = false;

	if (http_allow_hosts == NULL || http_allow_hosts[0] == '\0')
		return false;
	h = strip_brackets(pstrdup(host));
	copy = pstrdup(http_allow_hosts);
	if (!SplitGUCList(copy, ',', &items))
		return false;
	foreach(lc, items)
	{
		char	   *item = strip_brackets(pstrdup((char *) lfirst(lc)));

		if (pg_strcasecmp(item, h) == 0)
			found = true;
	}
	list_free(items);
	return found;
}

/* The policy: may a connection to this address (of a host listed or not) be made? */
static bool
address_allowed(int family, const unsigned char *addr, bool listed)
{
	if (listed || http_allow_private)
		return true;
	if (family == AF_INET)
		return ipv4_public(addr);
	if (family == AF_INET6)
		return ipv6_public(addr);
	return false;
}

/*
 * SQL: dalgo.http_address_allowed(address inet): would a source sync be
 * allowed to connect to this address under the current settings?  A pure
 * check, which connects nowhere; the address counts as listed when its text
 * is in dalgo.http_allow_hosts.
 */
Datum
dalgo_http_address_allowed(PG_FUNCTION_ARGS)
{
	inet	   *ip = PG_GETARG_INET_PP(0);
	int			family = ip_family(ip) == PGSQL_AF_INET ? AF_INET : AF_INET6;
	char		text[INET6_ADDRSTRLEN];

	if (inet_ntop(family, ip_addr(ip), text, sizeof(text)) == NULL)
		elog(ERROR, "could not format an address");
	PG_RETURN_BOOL(address_allowed(family, ip_addr(ip), host_listed(text)));
}

/* ---------------------------------------------------------------------------
 * URLs
 * ---------------------------------------------------------------------------
 */

typedef struct HttpUrl
{
	char	   *url;			/* as requested */
	char	   *host;			/* without brackets */
	char	   *port;			/* the port used, the scheme's default if none */
	bool		https;
	bool		listed;
	char	   *display;		/* scheme://host[:port]/path: safe in messages */
} HttpUrl;

/* Parse and check a URL: http or https, https unless the host is listed. */
static void
url_check(const char *url, HttpUrl *out, const char *what)
{
	CURLU	   *u = curl_url();
	char	   *scheme = NULL,
			   *host = NULL,
			   *port = NULL,
			   *path = NULL;
	CURLUcode	rc;
	StringInfoData disp;

	if (u == NULL)
		ereport(ERROR, (errcode(ERRCODE_OUT_OF_MEMORY), errmsg("out of memory")));
	rc = curl_url_set(u, CURLUPART_URL, url, CURLU_NON_SUPPORT_SCHEME);
	if (rc == CURLUE_OK)
		rc = curl_url_get(u, CURLUPART_SCHEME, &scheme, 0);
	if (rc == CURLUE_OK)
		rc = curl_url_get(u, CURLUPART_HOST, &host, 0);
	if (rc == CURLUE_OK)
	{
		char	   *effective = NULL;

		if (curl_url_get(u, CURLUPART_PORT, &port, 0) != CURLUE_OK)
			port = NULL;
		if (curl_url_get(u, CURLUPART_PATH, &path, 0) != CURLUE_OK)
			path = NULL;
		out->url = pstrdup(url);
		out->host = pstrdup(strip_brackets(host));
		if (curl_url_get(u, CURLUPART_PORT, &effective, CURLU_DEFAULT_PORT) == CURLUE_OK && effective)
		{
			out->port = pstrdup(effective);
			curl_free(effective);
		}
		else
			out->port = pstrdup("");
		out->https = pg_strcasecmp(scheme, "https") == 0;
		initStringInfo(&disp);
		appendStringInfo(&disp, "%s://%s", scheme, host);
		if (port)
			appendStringInfo(&disp, ":%s", port);
		appendStringInfoString(&disp, path ? path : "/");
		out->display = disp.data;
	}
	if (scheme && pg_strcasecmp(scheme, "https") != 0 && pg_strcasecmp(scheme, "http") != 0)
		rc = CURLUE_UNSUPPORTED_SCHEME;
	curl_free(scheme);
	curl_free(host);
	curl_free(port);
	curl_free(path);
	curl_url_cleanup(u);
	if (rc != CURLUE_OK)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s is not a valid http or https URL", what)));
	out->listed = host_listed(out->host);
	if (!out->https && !out->listed)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("%s %s refused: plain http is allowed only to hosts in dalgo.http_allow_hosts", what, out->display),
				 errhint("Use https, or ask a superuser to list the host in dalgo.http_allow_hosts.")));
}

/* Replace (or add) one query parameter of a URL; returns a new palloc'd URL. */
static char *
url_with_param(const char *url, const char *param, int64 value)
{
	CURLU	   *u = curl_url();
	char	   *query = NULL;
	char	   *result = NULL;
	StringInfoData q;
	char	   *tok;
	char	   *save;
	char	   *enc;
	char	   *out;
	size_t		plen = strlen(param);

	if (u == NULL || curl_url_set(u, CURLUPART_URL, url, 0) != CURLUE_OK)
	{
		curl_url_cleanup(u);
		ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE), errmsg("config.url is not a valid URL")));
	}
	initStringInfo(&q);
	if (curl_url_get(u, CURLUPART_QUERY, &query, 0) == CURLUE_OK && query != NULL)
	{
		char	   *copy = pstrdup(query);

		for (tok = strtok_r(copy, "&", &save); tok; tok = strtok_r(NULL, "&", &save))
		{
			if (strncmp(tok, param, plen) == 0 && (tok[plen] == '=' || tok[plen] == '\0'))
				continue;
			if (q.len > 0)
				appendStringInfoChar(&q, '&');
			appendStringInfoString(&q, tok);
		}
	}
	curl_free(query);
	enc = curl_easy_escape(NULL, param, 0);
	if (q.len > 0)
		appendStringInfoChar(&q, '&');
	appendStringInfo(&q, "%s=" INT64_FORMAT, enc ? enc : "", value);
	curl_free(enc);
	if (curl_url_set(u, CURLUPART_QUERY, q.data, 0) != CURLUE_OK ||
		curl_url_get(u, CURLUPART_URL, &result, 0) != CURLUE_OK)
	{
		curl_url_cleanup(u);
		ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE), errmsg("config.url is not a valid URL")));
	}
	out = pstrdup(result);
	curl_free(result);
	curl_url_cleanup(u);
	return out;
}

/* Resolve a (possibly relative) reference against a base URL. */
static char *
url_resolve(const char *base, const char *ref)
{
	CURLU	   *u = curl_url();
	char	   *result = NULL;
	char	   *out = NULL;

	if (u != NULL && curl_url_set(u, CURLUPART_URL, base, 0) == CURLUE_OK &&
		curl_url_set(u, CURLUPART_URL, ref, 0) == CURLUE_OK &&
		curl_url_get(u, CURLUPART_URL, &result, 0) == CURLUE_OK)
		out = pstrdup(result);
	curl_free(result);
	curl_url_cleanup(u);
	if (out == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("the next page's URL in the response is not a valid URL")));
	return out;
}

/* ---------------------------------------------------------------------------
 * Requests
 * ---------------------------------------------------------------------------
 */

/* One response; its buffers are malloc'd and freed when its context is reset. */
typedef struct HttpResponse
{
	long		status;
	char	   *body;
	size_t		len;
	size_t		cap;
	bool		oversized;
	char	   *link;			/* the Link header */
	char	   *retry_after;	/* the Retry-After header */
	char	   *content_type;
} HttpResponse;

/* The state of a fetch: one curl handle, the run, the progress counters. */
typedef struct HttpFetch
{
	CURL	   *curl;
	pg_uuid_t	run_id;
	pg_uuid_t	organization_id;
	pg_uuid_t	source_id;
	HttpUrl    *current;		/* the URL being fetched */
	HttpResponse *resp;
	bool		refused;
	char		refused_addr[INET6_ADDRSTRLEN];
	int64		bytes;			/* over all responses */
	int64		rows;
	int			page;
	TimestampTz last_progress;
	char		errbuf[CURL_ERROR_SIZE];
} HttpFetch;

/* Publish progress, at most every HTTP_PROGRESS_INTERVAL_MS unless forced. */
static void
fetch_progress(HttpFetch *f, bool force)
{
	TimestampTz now = GetCurrentTimestamp();

	if (!force && !TimestampDifferenceExceeds(f->last_progress, now, HTTP_PROGRESS_INTERVAL_MS))
		return;
	f->last_progress = now;
	dalgo_run_progress(&f->run_id, &f->organization_id, &f->source_id, f->rows, f->bytes, f->page);
}

/* Free a response's buffers (a memory context reset callback). */
static void
response_free(void *arg)
{
	HttpResponse *r = (HttpResponse *) arg;

	free(r->body);
	free(r->link);
	free(r->retry_after);
	free(r->content_type);
	memset(r, 0, sizeof(*r));
}

/* Empty a response for the next attempt. */
static void
response_reset(HttpResponse *r)
{
	free(r->link);
	free(r->retry_after);
	free(r->content_type);
	r->link = r->retry_after = r->content_type = NULL;
	r->len = 0;
	r->status = 0;
	r->oversized = false;
}

/* curl write callback: append to the body, refusing more than dalgo.http_max_bytes. */
static size_t
http_write(char *ptr, size_t size, size_t nmemb, void *userdata)
{
	HttpFetch  *f = (HttpFetch *) userdata;
	HttpResponse *r = f->resp;
	size_t		n = size * nmemb;

	if (r->len + n > (size_t) http_max_bytes)
	{
		r->oversized = true;
		return 0;
	}
	if (r->len + n + 1 > r->cap)
	{
		size_t		cap = Max(r->cap * 2, 65536);
		curl_off_t	announced = -1;
		char	   *body;

		/* Room for the announced length at once (no copies as it grows). */
		if (r->len == 0 && curl_easy_getinfo(f->curl, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &announced) == CURLE_OK &&
			announced > 0 && announced <= (curl_off_t) http_max_bytes)
			cap = Max(cap, (size_t) announced + 1);

		while (cap < r->len + n + 1)
			cap *= 2;
		body = realloc(r->body, cap);
		if (body == NULL)
			return 0;
		r->body = body;
		r->cap = cap;
	}
	memcpy(r->body + r->len, ptr, n);
	r->len += n;
	r->body[r->len] = '\0';
	f->bytes += n;
	return n;
}

/* Keep a malloc'd copy of a header's value (trimmed). */
static void
header_value(char **dst, const char *line, size_t len, size_t namelen)
{
	const char *v = line + namelen;
	const char *end = line + len;

	while (v < end && (*v == ' ' || *v == '\t'))
		v++;
	while (end > v && (end[-1] == '\r' || end[-1] == '\n' || end[-1] == ' '))
		end--;
	free(*dst);
	*dst = strndup(v, end - v);
}

/* curl header callback: keep Link, Retry-After and Content-Type. */
static size_t
http_header(char *buffer, size_t size, size_t nitems, void *userdata)
{
	HttpFetch  *f = (HttpFetch *) userdata;
	size_t		n = size * nitems;

	if (n >= 5 && pg_strncasecmp(buffer, "Link:", 5) == 0)
		header_value(&f->resp->link, buffer, n, 5);
	else if (n >= 12 && pg_strncasecmp(buffer, "Retry-After:", 12) == 0)
		header_value(&f->resp->retry_after, buffer, n, 12);
	else if (n >= 13 && pg_strncasecmp(buffer, "Content-Type:", 13) == 0)
		header_value(&f->resp->content_type, buffer, n, 13);
	return n;
}

/*
 * curl open-socket callback: the address policy, on the address curl is
 * about to connect to (after DNS resolution, for every attempt).
 */
static curl_socket_t
http_opensocket(void *clientp, curlsocktype purpose, struct curl_sockaddr *address)
{
	HttpFetch  *f = (HttpFetch *) clientp;
	const unsigned char *addr = NULL;

	if (address->family == AF_INET)
		addr = (const unsigned char *) &((struct sockaddr_in *) &address->addr)->sin_addr;
	else if (address->family == AF_INET6)
		addr = (const unsigned char *) &((struct sockaddr_in6 *) &address->addr)->sin6_addr;
	if (addr == NULL || !address_allowed(address->family, addr, f->current->listed))
	{
		f->refused = true;
		if (addr == NULL || inet_ntop(address->family, addr, f->refused_addr, sizeof(f->refused_addr)) == NULL)
			strlcpy(f->refused_addr, "(unknown)", sizeof(f->refused_addr));
		return CURL_SOCKET_BAD;
	}
	return socket(address->family, address->socktype, address->protocol);
}

/* curl progress callback: stop on a cancel or termination; publish progress. */
static int
http_xferinfo(void *clientp, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal, curl_off_t ulnow)
{
	HttpFetch  *f = (HttpFetch *) clientp;

	if (InterruptPending && (QueryCancelPending || ProcDiePending))
		return 1;
	fetch_progress(f, false);
	return 0;
}

/* Sleep ms milliseconds, interruptibly. */
static void
http_sleep(long ms)
{
	TimestampTz end = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), ms);

	for (;;)
	{
		long		left;

		CHECK_FOR_INTERRUPTS();
		left = TimestampDifferenceMilliseconds(GetCurrentTimestamp(), end);
		if (left <= 0)
			break;
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH, left, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
}

/* Milliseconds a Retry-After header asks for (seconds or an HTTP date); -1 if none. */
static long
retry_after_ms(const char *value)
{
	char	   *end;
	long		secs;
	time_t		when;

	if (value == NULL || value[0] == '\0')
		return -1;
	secs = strtol(value, &end, 10);
	if (end != value && *end == '\0')
		return secs < 0 ? 0 : Min(secs, 86400L) * 1000L;
	when = curl_getdate(value, NULL);
	if (when < 0)
		return -1;
	secs = (long) (when - time(NULL));
	return secs < 0 ? 0 : Min(secs, 86400L) * 1000L;
}

/* Is this curl result a connection error (retried)? */
static bool
connection_error(CURLcode rc)
{
	return rc == CURLE_COULDNT_CONNECT || rc == CURLE_COULDNT_RESOLVE_HOST ||
		rc == CURLE_SEND_ERROR || rc == CURLE_RECV_ERROR || rc == CURLE_GOT_NOTHING ||
		rc == CURLE_PARTIAL_FILE || rc == CURLE_SSL_CONNECT_ERROR;
}

/*
 * GET one URL (no redirects followed) with retries; on return the response
 * holds a status below 400 other than a retried one.  Errors name the URL by
 * its display form only.
 */
static void
http_get_once(HttpFetch *f, HttpUrl *u, struct curl_slist *headers)
{
	HttpResponse *r = f->resp;
	CURL	   *c = f->curl;

	f->current = u;
	curl_easy_setopt(c, CURLOPT_URL, u->url);
	curl_easy_setopt(c, CURLOPT_HTTPHEADER, headers);
	for (int attempt = 0;; attempt++)
	{
		CURLcode	rc;
		long		wait = -1;
		bool		retry = false;

		response_reset(r);
		f->refused = false;
		f->errbuf[0] = '\0';
		rc = curl_easy_perform(c);
		CHECK_FOR_INTERRUPTS();
		if (f->refused)
			ereport(ERROR,
					(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
					 errmsg("connection to %s refused: address %s is not allowed", u->display, f->refused_addr),
					 errdetail("With dalgo.http_allow_private off, loopback, private, link-local, unique-local and unspecified addresses are refused unless the host is listed in dalgo.http_allow_hosts."),
					 errhint("A superuser may list the host in dalgo.http_allow_hosts.")));
		if (r->oversized)
			ereport(ERROR,
					(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
					 errmsg("the response from %s is larger than dalgo.http_max_bytes (%d bytes)", u->display, http_max_bytes)));
		if (rc == CURLE_OPERATION_TIMEDOUT)
			ereport(ERROR,
					(errcode(ERRCODE_QUERY_CANCELED),
					 errmsg("the request to %s timed out after %d s (dalgo.http_timeout)", u->display, http_timeout)));
		if (rc == CURLE_ABORTED_BY_CALLBACK)
			elog(ERROR, "the request to %s was aborted", u->display);
		if (rc != CURLE_OK)
		{
			if (!connection_error(rc) || attempt >= http_retries)
				ereport(ERROR,
						(errcode(ERRCODE_CONNECTION_FAILURE),
						 errmsg("could not fetch %s: %s", u->display, curl_easy_strerror(rc)),
						 attempt > 0 ? errdetail("Tried %d times.", attempt + 1) : 0));
			retry = true;
		}
		else
		{
			curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &r->status);
			if (r->status == 429 || r->status >= 500)
			{
				if (attempt >= http_retries)
					ereport(ERROR,
							(errcode(ERRCODE_CONNECTION_FAILURE),
							 errmsg("%s answered HTTP %ld", u->display, r->status),
							 attempt > 0 ? errdetail("Tried %d times.", attempt + 1) : 0));
				retry = true;
				wait = retry_after_ms(r->retry_after);
			}
			else if (r->status >= 400)
				ereport(ERROR,
						(errcode(ERRCODE_CONNECTION_FAILURE),
						 errmsg("%s answered HTTP %ld", u->display, r->status),
						 (r->status == 401 || r->status == 403) ?
						 errhint("Check the source's config.credentials.") : 0));
		}
		if (!retry)
			return;
		/* Exponential backoff from 1 s, or what Retry-After asks, at most dalgo.http_timeout. */
		if (wait < 0)
			wait = 1000L << Min(attempt, 10);
		wait = Min(wait, (long) http_timeout * 1000L);
		http_sleep(wait);
	}
}

/* A request's headers. */
typedef struct HttpHeaders
{
	List	   *plain;			/* "Name: value" sent to every host */
	List	   *secret;			/* credentials: sent only to the source's own host */
} HttpHeaders;

/* Build a curl header list; secrets only when to_origin. */
static struct curl_slist *
headers_list(HttpHeaders *h, bool to_origin)
{
	struct curl_slist *list = NULL;
	ListCell   *lc;

	foreach(lc, h->plain)
		list = curl_slist_append(list, (char *) lfirst(lc));
	if (to_origin)
		foreach(lc, h->secret)
			list = curl_slist_append(list, (char *) lfirst(lc));
	return list;
}

/* GET one URL with a header list, which is freed whatever happens. */
static void
http_get_headers(HttpFetch *f, HttpUrl *u, struct curl_slist *list)
{
	PG_TRY();
	{
		http_get_once(f, u, list);
	}
	PG_CATCH();
	{
		curl_easy_setopt(f->curl, CURLOPT_HTTPHEADER, NULL);
		curl_slist_free_all(list);
		PG_RE_THROW();
	}
	PG_END_TRY();
	curl_easy_setopt(f->curl, CURLOPT_HTTPHEADER, NULL);
	curl_slist_free_all(list);
}

/*
 * GET a URL, following redirects by hand (at most HTTP_MAX_REDIRECTS, each
 * hop checked like the first); credentials go only to the first URL's origin
 * (scheme, host and port).
 * Returns the final URL.
 */
static HttpUrl *
http_get(HttpFetch *f, const char *url, HttpHeaders *headers, const char *what)
{
	HttpUrl    *first = palloc0(sizeof(HttpUrl));
	HttpUrl    *u = first;

	url_check(url, first, what);
	for (int hop = 0;; hop++)
	{
		struct curl_slist *list;
		/* The same origin: scheme, host and port. */
		bool		to_origin = pg_strcasecmp(u->host, first->host) == 0 && u->https == first->https &&
			strcmp(u->port, first->port) == 0;
		char	   *location = NULL;

		list = headers_list(headers, to_origin);
		http_get_headers(f, u, list);
		if (f->resp->status < 300 || f->resp->status >= 400 || f->resp->status == 304)
		{
			if (f->resp->status >= 300)
				ereport(ERROR,
						(errcode(ERRCODE_CONNECTION_FAILURE),
						 errmsg("%s answered HTTP %ld", u->display, f->resp->status)));
			return u;
		}
		curl_easy_getinfo(f->curl, CURLINFO_REDIRECT_URL, &location);
		if (location == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_CONNECTION_FAILURE),
					 errmsg("%s answered HTTP %ld without a Location", u->display, f->resp->status)));
		if (hop >= HTTP_MAX_REDIRECTS)
			ereport(ERROR,
					(errcode(ERRCODE_CONNECTION_FAILURE),
					 errmsg("too many redirects from %s (at most %d are followed)", first->display, HTTP_MAX_REDIRECTS)));
		{
			char	   *next = pstrdup(location);
			HttpUrl    *nu = palloc0(sizeof(HttpUrl));

			url_check(next, nu, psprintf("redirect from %s to", u->display));
			u = nu;
		}
	}
}

/* ---------------------------------------------------------------------------
 * The staging table
 * ---------------------------------------------------------------------------
 */

typedef struct SinkColumn
{
	char	   *key;			/* the JSON key or header it comes from */
	int			keylen;
	char	   *name;			/* the column's name */
	bool		json;			/* jsonb, else text */
} SinkColumn;

typedef struct Sink
{
	pg_uuid_t	organization_id;
	char	   *schema;
	char	   *table;
	SinkColumn *cols;
	int			ncols;
	int			maxcols;
	int			ncreated;		/* columns the table has */
	bool		created;
	Relation	rel;
	TupleTableSlot *slot;		/* the row being filled: one of slots[] */
	TupleTableSlot *slots[SINK_BATCH];	/* rows waiting for a multi-insert */
	int			nslots;			/* slots[] created */
	int			nbuffered;		/* rows in slots[] */
	Size		bufbytes;
	BulkInsertState bistate;
	int			hint;			/* where the next key is likely to be */
	MemoryContext cxt;			/* lives as long as the sink */
} Sink;

/* Is a name taken (by a column or a system column)? */
static bool
sink_name_taken(Sink *s, const char *name)
{
	static const char *const system[] = {"tableoid", "xmin", "cmin", "xmax", "cmax", "ctid"};

	for (int i = 0; i < (int) lengthof(system); i++)
		if (strcmp(name, system[i]) == 0)
			return true;
	for (int i = 0; i < s->ncols; i++)
		if (strcmp(s->cols[i].name, name) == 0)
			return true;
	return false;
}

/*
 * Add a column for a key: its name is the key cut to 63 bytes, column_<n>
 * when blank, with _2, _3 ... appended when taken.  Returns its index.
 */
static int
sink_add_column(Sink *s, const char *key, int keylen, bool json)
{
	MemoryContext old = MemoryContextSwitchTo(s->cxt);
	char	   *base;
	char	   *name;
	bool		blank = true;
	SinkColumn *c;

	if (s->ncols >= MaxHeapAttributeNumber)
		ereport(ERROR,
				(errcode(ERRCODE_TOO_MANY_COLUMNS),
				 errmsg("the source has more than %d columns", MaxHeapAttributeNumber)));
	for (int i = 0; i < keylen; i++)
		if (!isspace((unsigned char) key[i]))
			blank = false;
	if (blank)
		base = psprintf("column_%d", s->ncols + 1);
	else
		base = pnstrdup(key, pg_mbcliplen(key, keylen, NAMEDATALEN - 1));
	name = base;
	for (int k = 2; sink_name_taken(s, name) || strlen(name) == 0; k++)
	{
		char		suffix[16];
		int			room;

		snprintf(suffix, sizeof(suffix), "_%d", k);
		room = pg_mbcliplen(base, strlen(base), NAMEDATALEN - 1 - strlen(suffix));
		name = psprintf("%.*s%s", room, base, suffix);
	}
	if (s->ncols == s->maxcols)
	{
		s->maxcols = Max(16, s->maxcols * 2);
		s->cols = s->cols ? repalloc(s->cols, s->maxcols * sizeof(SinkColumn)) : palloc(s->maxcols * sizeof(SinkColumn));
	}
	c = &s->cols[s->ncols];
	c->key = pnstrdup(key, keylen);
	c->keylen = keylen;
	c->name = name;
	c->json = json;
	MemoryContextSwitchTo(old);
	return s->ncols++;
}

/* The column of a key, or -1. */
static int
sink_find_column(Sink *s, const char *key, int keylen)
{
	if (s->hint < s->ncols && s->cols[s->hint].keylen == keylen &&
		memcmp(s->cols[s->hint].key, key, keylen) == 0)
		return s->hint;
	for (int i = 0; i < s->ncols; i++)
		if (s->cols[i].keylen == keylen && memcmp(s->cols[i].key, key, keylen) == 0)
			return i;
	return -1;
}

/* Write the buffered rows (one multi-insert, as COPY does). */
static void
sink_flush(Sink *s)
{
	if (s->nbuffered == 0)
		return;
	table_multi_insert(s->rel, s->slots, s->nbuffered, GetCurrentCommandId(true), 0, s->bistate);
	for (int i = 0; i < s->nbuffered; i++)
		ExecClearTuple(s->slots[i]);
	s->nbuffered = 0;
	s->bufbytes = 0;
}

/* Close the staging table (keeping its lock). */
static void
sink_close(Sink *s)
{
	if (s->rel == NULL)
		return;
	sink_flush(s);
	for (int i = 0; i < s->nslots; i++)
		ExecDropSingleTupleTableSlot(s->slots[i]);
	s->nslots = 0;
	FreeBulkInsertState(s->bistate);
	table_close(s->rel, NoLock);
	s->rel = NULL;
	s->slot = NULL;
	s->bistate = NULL;
}

/* Run one statement as the organization's warehouse role. */
static void
sink_execute(Sink *s, const char *sql)
{
	Oid			types[2] = {UUIDOID, TEXTOID};
	Datum		values[2];

	values[0] = UUIDPGetDatum(&s->organization_id);
	values[1] = CStringGetTextDatum(sql);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (SPI_execute_with_args("SELECT dalgo_internal.warehouse_execute($1, $2)", 2, types, values, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not create the staging table");
	SPI_finish();
	CommandCounterIncrement();
}

/* Create the staging table, or add the columns it lacks; then open it. */
static void
sink_ready(Sink *s)
{
	StringInfoData sql;

	if (s->created && s->ncreated == s->ncols && s->rel != NULL)
		return;
	if (!s->created || s->ncreated < s->ncols)
	{
		sink_close(s);
		initStringInfo(&sql);
		if (!s->created)
		{
			appendStringInfo(&sql, "CREATE TABLE %s.%s (", quote_identifier(s->schema), quote_identifier(s->table));
			for (int i = 0; i < s->ncols; i++)
				appendStringInfo(&sql, "%s%s %s", i > 0 ? ", " : "", quote_identifier(s->cols[i].name),
								 s->cols[i].json ? "jsonb" : "text");
			appendStringInfoChar(&sql, ')');
		}
		else
		{
			appendStringInfo(&sql, "ALTER TABLE %s.%s ", quote_identifier(s->schema), quote_identifier(s->table));
			for (int i = s->ncreated; i < s->ncols; i++)
				appendStringInfo(&sql, "%sADD COLUMN %s %s", i > s->ncreated ? ", " : "",
								 quote_identifier(s->cols[i].name), s->cols[i].json ? "jsonb" : "text");
		}
		sink_execute(s, sql.data);
		pfree(sql.data);
		s->created = true;
		s->ncreated = s->ncols;
	}
	{
		MemoryContext old = MemoryContextSwitchTo(s->cxt);
		Oid			nsp = get_namespace_oid(s->schema, false);
		Oid			relid = get_relname_relid(s->table, nsp);

		if (!OidIsValid(relid))
			elog(ERROR, "staging table %s.%s vanished", s->schema, s->table);
		s->rel = table_open(relid, RowExclusiveLock);
		s->nslots = 0;
		s->nbuffered = 0;
		s->bufbytes = 0;
		s->slot = NULL;
		s->bistate = GetBulkInsertState();
		MemoryContextSwitchTo(old);
	}
}

/* A JSON value as a column's datum: text (JSON text for nested values) or jsonb. */
static Datum
sink_value(SinkColumn *c, JsonbValue *v, bool *isnull)
{
	*isnull = false;
	if (v->type == jbvNull)
	{
		*isnull = true;
		return (Datum) 0;
	}
	if (c->json)
		return JsonbPGetDatum(JsonbValueToJsonb(v));
	switch (v->type)
	{
		case jbvString:
			return PointerGetDatum(cstring_to_text_with_len(v->val.string.val, v->val.string.len));
		case jbvNumeric:
			return CStringGetTextDatum(DatumGetCString(DirectFunctionCall1(numeric_out, NumericGetDatum(v->val.numeric))));
		case jbvBool:
			return CStringGetTextDatum(v->val.boolean ? "true" : "false");
		case jbvBinary:
			return CStringGetTextDatum(JsonbToCString(NULL, v->val.binary.data, v->val.binary.len));
		default:
			elog(ERROR, "unexpected JSON value type %d", (int) v->type);
	}
	return (Datum) 0;
}

/* Queue the row in the slot's values (set by the caller) for the next multi-insert. */
static void
sink_insert(Sink *s)
{
	ExecStoreVirtualTuple(s->slot);
	ExecMaterializeSlot(s->slot);	/* the values live in a per-row context */
	s->bufbytes += ((HeapTupleTableSlot *) s->slot)->tuple ? ((HeapTupleTableSlot *) s->slot)->tuple->t_len : 0;
	s->nbuffered++;
	if (s->nbuffered == SINK_BATCH || s->bufbytes >= SINK_BATCH_BYTES)
		sink_flush(s);
}

/* Prepare the next slot for a row: every column NULL. */
static void
sink_begin_row(Sink *s)
{
	if (s->nbuffered == s->nslots)
	{
		MemoryContext old = MemoryContextSwitchTo(s->cxt);

		s->slots[s->nslots++] = table_slot_create(s->rel, NULL);
		MemoryContextSwitchTo(old);
	}
	s->slot = s->slots[s->nbuffered];
	ExecClearTuple(s->slot);
	for (int i = 0; i < s->slot->tts_tupleDescriptor->natts; i++)
	{
		s->slot->tts_values[i] = (Datum) 0;
		s->slot->tts_isnull[i] = true;
	}
}

/* ---------------------------------------------------------------------------
 * JSON
 * ---------------------------------------------------------------------------
 */

/* Parse a response body as JSON; errors name the URL. */
static Jsonb *
parse_json(HttpFetch *f, HttpUrl *u)
{
	if (f->resp->body == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_TEXT_REPRESENTATION),
				 errmsg("the response from %s is empty", u->display)));
	return DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(f->resp->body)));
}

/*
 * Follow a JSON pointer (RFC 6901) from a container; false when it leads
 * nowhere.  "" is the whole document.
 */
static bool
json_pointer(JsonbContainer *root, const char *pointer, JsonbValue *out)
{
	JsonbValue	cur;
	const char *p = pointer;

	cur.type = jbvBinary;
	cur.val.binary.data = root;
	cur.val.binary.len = VARSIZE_ANY_EXHDR(root);
	if (JsonContainerIsScalar(root))
	{
		JsonbValue *v = getIthJsonbValueFromContainer(root, 0);

		if (v == NULL)
			return false;
		cur = *v;
	}
	if (*p != '\0' && *p != '/')
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("\"%s\" is not a JSON pointer", pointer),
				 errhint("A JSON pointer is empty or starts with /, as in /data/items.")));
	while (*p == '/')
	{
		const char *end = strchr(p + 1, '/');
		int			len = end ? (int) (end - (p + 1)) : (int) strlen(p + 1);
		StringInfoData tok;
		JsonbContainer *c;

		initStringInfo(&tok);
		for (int i = 0; i < len; i++)
		{
			char		ch = p[1 + i];

			if (ch == '~' && i + 1 < len && (p[2 + i] == '0' || p[2 + i] == '1'))
			{
				appendStringInfoChar(&tok, p[2 + i] == '0' ? '~' : '/');
				i++;
			}
			else
				appendStringInfoChar(&tok, ch);
		}
		p += 1 + len;
		if (cur.type != jbvBinary)
			return false;
		c = cur.val.binary.data;
		if (JsonContainerIsObject(c))
		{
			if (getKeyJsonValueFromContainer(c, tok.data, tok.len, &cur) == NULL)
				return false;
		}
		else
		{
			char	   *e;
			long		idx = strtol(tok.data, &e, 10);
			JsonbValue *v;

			if (tok.len == 0 || *e != '\0' || idx < 0 || idx > INT_MAX)
				return false;
			v = getIthJsonbValueFromContainer(c, (uint32) idx);
			if (v == NULL)
				return false;
			cur = *v;
		}
	}
	*out = cur;
	return true;
}

/* ---------------------------------------------------------------------------
 * The two source types
 * ---------------------------------------------------------------------------
 */

/* A string field of a config object, or NULL (an error when not a string). */
static char *
config_string(Jsonb *config, const char *key, const char *what)
{
	JsonbValue	v;

	if (config == NULL || !JsonContainerIsObject(&config->root) ||
		getKeyJsonValueFromContainer(&config->root, key, strlen(key), &v) == NULL || v.type == jbvNull)
		return NULL;
	if (v.type != jbvString)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s.%s must be a string", what, key)));
	return pnstrdup(v.val.string.val, v.val.string.len);
}

/* A number field of a config object, or dflt. */
static int64
config_int(Jsonb *config, const char *key, int64 dflt, int64 min)
{
	JsonbValue	v;
	int64		n;

	if (config == NULL || !JsonContainerIsObject(&config->root) ||
		getKeyJsonValueFromContainer(&config->root, key, strlen(key), &v) == NULL || v.type == jbvNull)
		return dflt;
	if (v.type != jbvNumeric)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("config.%s must be a number", key)));
	n = DatumGetInt64(DirectFunctionCall1(numeric_int8, NumericGetDatum(v.val.numeric)));
	if (n < min)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("config.%s must be at least " INT64_FORMAT, key, min)));
	return n;
}

/* A nested object of a config object, or NULL. */
static Jsonb *
config_object(Jsonb *config, const char *key, const char *what)
{
	JsonbValue	v;

	if (config == NULL || !JsonContainerIsObject(&config->root) ||
		getKeyJsonValueFromContainer(&config->root, key, strlen(key), &v) == NULL || v.type == jbvNull)
		return NULL;
	if (v.type != jbvBinary || !JsonContainerIsObject(v.val.binary.data))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s.%s must be an object", what, key)));
	return JsonbValueToJsonb(&v);
}

/* Refuse header names and values that could smuggle another header. */
static void
check_header(const char *name, const char *value, const char *what)
{
	for (const char *p = name; *p; p++)
		if (!(isalnum((unsigned char) *p) || strchr("!#$%&'*+-.^_`|~", *p)))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("%s has an invalid header name", what)));
	if (name[0] == '\0')
		ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE), errmsg("%s has an empty header name", what)));
	/* Headers that say where a request goes or how it is framed are curl's. */
	{
		static const char *const reserved[] = {"Host", "Content-Length", "Transfer-Encoding", "Connection",
		"Expect", "Upgrade", "TE", "Trailer", "Keep-Alive"};

		for (int i = 0; i < (int) lengthof(reserved); i++)
			if (pg_strcasecmp(name, reserved[i]) == 0)
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("%s may not set the header \"%s\"", what, reserved[i]),
						 errhint("The host, framing and connection headers are set by dalgo from the URL.")));
		if (pg_strncasecmp(name, "Proxy-", 6) == 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("%s may not set a Proxy- header", what)));
	}
	for (const char *p = value; *p; p++)
		if (*p == '\r' || *p == '\n')
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("%s has a header value with a line break", what)));
}

/* Add a header line to a list. */
static List *
header_add(List *list, const char *name, const char *value, const char *what)
{
	check_header(name, value, what);
	return lappend(list, psprintf("%s: %s", name, value));
}

/* The credential headers of an api source: bearer_token, header + value, or username + password. */
static List *
api_credentials(Jsonb *creds)
{
	List	   *list = NIL;
	char	   *bearer = config_string(creds, "bearer_token", "config.credentials");
	char	   *header = config_string(creds, "header", "config.credentials");
	char	   *value = config_string(creds, "value", "config.credentials");
	char	   *user = config_string(creds, "username", "config.credentials");
	char	   *password = config_string(creds, "password", "config.credentials");

	if (bearer)
		list = header_add(list, "Authorization", psprintf("Bearer %s", bearer), "config.credentials.bearer_token");
	if (header)
		list = header_add(list, header, value ? value : "", "config.credentials.header");
	if (user || password)
	{
		char	   *plain = psprintf("%s:%s", user ? user : "", password ? password : "");
		int			len = pg_b64_enc_len(strlen(plain));
		char	   *enc = palloc(len + 1);

		len = pg_b64_encode(plain, strlen(plain), enc, len);
		enc[len] = '\0';
		list = header_add(list, "Authorization", psprintf("Basic %s", enc), "config.credentials");
	}
	return list;
}

/* Error context: which page of which source is being read. */
typedef struct FetchContext
{
	HttpFetch  *f;
	const char *display;
} FetchContext;

/* Add "page N of URL" to errors raised while a page is processed. */
static void
fetch_error_context(void *arg)
{
	FetchContext *c = (FetchContext *) arg;

	if (c->display)
		errcontext("page %d of %s", c->f->page, c->display);
}

/*
 * Streaming parse of one page of an api source (PostgreSQL's JSON parser
 * with callbacks): records are the objects of the array at config.records;
 * each becomes a row as soon as it ends, its keys in the order they are
 * written (jsonb would sort them).  The value at the next_url pointer is
 * kept.  Nothing but the current record is built in memory.
 */
#define PAGE_MAX_DEPTH 64

typedef struct PathStep
{
	bool		is_array;
	int			index;			/* arrays: the current element */
	char	   *key;			/* objects: the current field */
} PathStep;

typedef struct RecordField
{
	int			col;			/* -1: a new key */
	char	   *key;
	bool		nested;			/* an object or array */
	JsonTokenType type;			/* of a scalar */
	char	   *scalar;			/* a scalar's text (strings de-escaped) */
	char	   *raw;			/* the value as written in the page */
	char	   *raw_end;
} RecordField;

typedef struct PageParse
{
	HttpFetch  *f;
	Sink	   *s;
	HttpUrl    *u;
	JsonLexContext *lex;
	MemoryContext rowcxt;
	MemoryContext pagecxt;
	List	   *records_path;	/* tokens of config.records */
	List	   *next_path;		/* tokens of the next_url pointer, or NIL */
	bool		want_next;
	PathStep	path[PAGE_MAX_DEPTH];
	int			depth;			/* containers open */
	int			records_depth;	/* depth of the records array, or -1 */
	bool		found_records;
	bool		in_record;
	RecordField *fields;
	int			nfields;
	int			maxfields;
	int			nrecords;
	char	   *next;			/* the next_url value */
	bool		next_found;
} PageParse;

/* Split a JSON pointer into its unescaped tokens. */
static List *
pointer_tokens(const char *pointer)
{
	List	   *tokens = NIL;
	const char *p = pointer;

	if (*p != '\0' && *p != '/')
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("\"%s\" is not a JSON pointer", pointer),
				 errhint("A JSON pointer is empty or starts with /, as in /data/items.")));
	while (*p == '/')
	{
		StringInfoData tok;

		initStringInfo(&tok);
		p++;
		while (*p && *p != '/')
		{
			if (p[0] == '~' && (p[1] == '0' || p[1] == '1'))
			{
				appendStringInfoChar(&tok, p[1] == '0' ? '~' : '/');
				p += 2;
			}
			else
				appendStringInfoChar(&tok, *p++);
		}
		tokens = lappend(tokens, tok.data);
	}
	return tokens;
}

/* Is the value that starts now (at the current depth) the one a pointer names? */
static bool
page_at(PageParse *pp, List *tokens)
{
	ListCell   *lc;
	int			i = 0;

	if (list_length(tokens) != pp->depth)
		return false;
	foreach(lc, tokens)
	{
		PathStep   *st = &pp->path[i++];
		char	   *tok = (char *) lfirst(lc);

		if (st->is_array)
		{
			char	   *e;
			long		idx = strtol(tok, &e, 10);

			if (*tok == '\0' || *e != '\0' || idx != st->index)
				return false;
		}
		else if (st->key == NULL || strcmp(st->key, tok) != 0)
			return false;
	}
	return true;
}

/* Write the current record as a row, adding columns for new keys. */
static void
page_write_record(PageParse *pp)
{
	Sink	   *s = pp->s;
	bool		added = false;

	for (int i = 0; i < pp->nfields; i++)
	{
		RecordField *fl = &pp->fields[i];

		if (fl->col < 0)
		{
			/* a key seen for the first time: jsonb if its value is nested */
			fl->col = sink_add_column(s, fl->key, strlen(fl->key), fl->nested);
			added = true;
		}
	}
	if (added || s->rel == NULL)
		sink_ready(s);
	sink_begin_row(s);
	for (int i = 0; i < pp->nfields; i++)
	{
		RecordField *fl = &pp->fields[i];
		SinkColumn *c = &s->cols[fl->col];
		Datum		d;

		if (!fl->nested && fl->type == JSON_TOKEN_NULL)
			continue;
		if (c->json)
			d = DirectFunctionCall1(jsonb_in, CStringGetDatum(pnstrdup(fl->raw, fl->raw_end - fl->raw)));
		else if (fl->nested)
			d = PointerGetDatum(cstring_to_text_with_len(fl->raw, fl->raw_end - fl->raw));
		else
			d = CStringGetTextDatum(fl->type == JSON_TOKEN_TRUE ? "true" :
									fl->type == JSON_TOKEN_FALSE ? "false" : fl->scalar);
		s->slot->tts_values[fl->col] = d;
		s->slot->tts_isnull[fl->col] = false;
	}
	sink_insert(s);
	pp->f->rows++;
	pp->nrecords++;
	if ((pp->f->rows & 1023) == 0)
	{
		CHECK_FOR_INTERRUPTS();
		fetch_progress(pp->f, false);
	}
}

/* A container starts: maybe the records array, or a record. */
static void
page_container_start(PageParse *pp, bool is_array)
{
	if (pp->in_record)
		return;					/* inside a record: values are taken raw */
	if (pp->records_depth >= 0 && pp->depth == pp->records_depth + 1)
	{
		if (is_array)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("a record in the response from %s is not a JSON object", pp->u->display)));
		pp->in_record = true;
		pp->nfields = 0;
		pp->s->hint = 0;
		MemoryContextSwitchTo(pp->rowcxt);
	}
	else if (is_array && pp->records_depth < 0 && !pp->found_records && page_at(pp, pp->records_path))
	{
		pp->records_depth = pp->depth;
		pp->found_records = true;
	}
	if (pp->depth >= PAGE_MAX_DEPTH)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("the response from %s is nested more than %d levels deep", pp->u->display, PAGE_MAX_DEPTH)));
	pp->path[pp->depth].is_array = is_array;
	pp->path[pp->depth].index = -1;
	pp->path[pp->depth].key = NULL;
	pp->depth++;
}

/* A container ends: a record is written; the records array closes. */
static void
page_container_end(PageParse *pp)
{
	pp->depth--;
	if (pp->in_record && pp->depth == pp->records_depth + 1)
	{
		page_write_record(pp);
		pp->in_record = false;
		MemoryContextSwitchTo(pp->pagecxt);
		MemoryContextReset(pp->rowcxt);
		pp->fields = NULL;
		pp->maxfields = 0;
	}
	else if (pp->depth == pp->records_depth)
		pp->records_depth = -1;
}

/* Callbacks of the JSON parser. */
static void
page_object_start(void *state)
{
	PageParse  *pp = (PageParse *) state;

	if (pp->in_record)
		pp->depth++;
	else
		page_container_start(pp, false);
}

static void
page_object_end(void *state)
{
	PageParse  *pp = (PageParse *) state;

	if (pp->in_record && pp->depth > pp->records_depth + 2)
		pp->depth--;
	else
		page_container_end(pp);
}

static void
page_array_start(void *state)
{
	PageParse  *pp = (PageParse *) state;

	if (pp->in_record)
		pp->depth++;
	else
		page_container_start(pp, true);
}

static void
page_field_start(void *state, char *fname, bool isnull)
{
	PageParse  *pp = (PageParse *) state;

	if (pp->in_record)
	{
		if (pp->depth == pp->records_depth + 2)
		{
			RecordField *fl;

			if (pp->nfields == pp->maxfields)
			{
				pp->maxfields = Max(16, pp->maxfields * 2);
				pp->fields = pp->fields ? repalloc(pp->fields, pp->maxfields * sizeof(RecordField))
					: palloc(pp->maxfields * sizeof(RecordField));
			}
			fl = &pp->fields[pp->nfields++];
			fl->col = sink_find_column(pp->s, fname, strlen(fname));
			if (fl->col >= 0)
				pp->s->hint = fl->col + 1;
			fl->key = fname;
			fl->nested = true;	/* until a scalar says otherwise */
			fl->type = JSON_TOKEN_NULL;
			fl->scalar = NULL;
			fl->raw = pp->lex->token_start;
			fl->raw_end = NULL;
		}
		return;
	}
	pp->path[pp->depth - 1].key = MemoryContextStrdup(pp->pagecxt, fname);
}

static void
page_field_end(void *state, char *fname, bool isnull)
{
	PageParse  *pp = (PageParse *) state;

	if (pp->in_record && pp->depth == pp->records_depth + 2)
		pp->fields[pp->nfields - 1].raw_end = pp->lex->prev_token_terminator;
}

static void
page_element_start(void *state, bool isnull)
{
	PageParse  *pp = (PageParse *) state;

	if (!pp->in_record)
		pp->path[pp->depth - 1].index++;
}

static void
page_scalar(void *state, char *token, JsonTokenType tokentype)
{
	PageParse  *pp = (PageParse *) state;

	if (pp->in_record)
	{
		if (pp->depth == pp->records_depth + 2)
		{
			RecordField *fl = &pp->fields[pp->nfields - 1];

			fl->nested = false;
			fl->type = tokentype;
			fl->scalar = token;
		}
		return;
	}
	if (pp->records_depth >= 0 && pp->depth == pp->records_depth + 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("a record in the response from %s is not a JSON object", pp->u->display)));
	if (pp->want_next && page_at(pp, pp->next_path))
	{
		pp->next_found = true;
		pp->next = tokentype == JSON_TOKEN_STRING ? MemoryContextStrdup(pp->pagecxt, token) : NULL;
	}
}

/* Parse one page: write its records, find the next_url value. */
static void
page_parse(PageParse *pp, char *body, size_t len)
{
	JsonSemAction sem;
	JsonParseErrorType rc;

	memset(&sem, 0, sizeof(sem));
	sem.semstate = pp;
	sem.object_start = page_object_start;
	sem.object_end = page_object_end;
	sem.array_start = page_array_start;
	sem.array_end = page_object_end;
	sem.object_field_start = page_field_start;
	sem.object_field_end = page_field_end;
	sem.array_element_start = page_element_start;
	sem.scalar = page_scalar;
	pp->lex = makeJsonLexContextCstringLen(body, len, GetDatabaseEncoding(), true);
	pp->depth = 0;
	pp->records_depth = -1;
	pp->found_records = false;
	pp->in_record = false;
	pp->nrecords = 0;
	pp->next = NULL;
	pp->next_found = false;
	rc = pg_parse_json(pp->lex, &sem);
	MemoryContextSwitchTo(pp->pagecxt);
	if (rc != JSON_SUCCESS)
		json_ereport_error(rc, pp->lex);
	if (!pp->found_records)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("config.records does not point to an array in the response from %s", pp->u->display)));
}

/* Does a Link parameter list (after the >) say rel="next"? */
static bool
link_rel_next(const char *params)
{
	const char *p = params;

	while ((p = strchr(p, ';')) != NULL)
	{
		const char *q = p + 1;

		while (*q == ' ' || *q == '\t')
			q++;
		p = q;
		if (pg_strncasecmp(q, "rel", 3) != 0)
			continue;
		q += 3;
		while (*q == ' ')
			q++;
		if (*q != '=')
			continue;
		q++;
		while (*q == ' ')
			q++;
		if (*q == '"')
			q++;
		/* rel holds space-separated relation types */
		while (*q && *q != '"' && *q != ';')
		{
			const char *e = q;

			while (*e && *e != ' ' && *e != '"' && *e != ';')
				e++;
			if (e - q == 4 && pg_strncasecmp(q, "next", 4) == 0)
				return true;
			q = e;
			while (*q == ' ')
				q++;
		}
	}
	return false;
}

/* The target of the rel="next" link of a Link header, or NULL. */
static char *
link_next(const char *link)
{
	const char *p = link;

	while (p && *p)
	{
		const char *lt = strchr(p, '<');
		const char *gt;
		const char *end;
		char	   *params;

		if (lt == NULL)
			return NULL;
		gt = strchr(lt, '>');
		if (gt == NULL)
			return NULL;
		end = strchr(gt, ',');
		params = pnstrdup(gt + 1, end ? (size_t) (end - (gt + 1)) : strlen(gt + 1));
		if (link_rel_next(params))
			return pnstrdup(lt + 1, gt - (lt + 1));
		p = end ? end + 1 : NULL;
	}
	return NULL;
}

/* An api source: pages of records. */
static void
fetch_api(HttpFetch *f, Sink *s, Jsonb *config, Jsonb *creds)
{
	char	   *url = config_string(config, "url", "config");
	char	   *records = config_string(config, "records", "config");
	Jsonb	   *pagination = config_object(config, "pagination", "config");
	Jsonb	   *hdrs = config_object(config, "headers", "config");
	int64		max_pages = config_int(config, "max_pages", HTTP_DEFAULT_MAX_PAGES, 1);
	char	   *ptype = pagination ? config_string(pagination, "type", "config.pagination") : NULL;
	char	   *param = NULL;
	char	   *limit_param = NULL;
	char	   *next_pointer = NULL;
	int64		page_no = 1;
	int64		limit = 100;
	int64		offset = 0;
	HttpHeaders headers = {NIL, NIL};
	MemoryContext pagecxt;
	MemoryContext rowcxt;
	MemoryContext outer = CurrentMemoryContext;
	char	   *next_url;
	FetchContext ectx = {f, NULL};
	ErrorContextCallback errcb;
	PageParse	pp;

	if (url == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("an api source needs config.url")));
	if (records == NULL)
		records = "";
	if (ptype == NULL && pagination != NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("config.pagination needs a type: next_url, page, offset or link_header")));
	if (ptype && strcmp(ptype, "next_url") == 0)
	{
		next_pointer = config_string(pagination, "pointer", "config.pagination");
		if (next_pointer == NULL)
			next_pointer = "/next";
	}
	else if (ptype && strcmp(ptype, "page") == 0)
	{
		param = config_string(pagination, "param", "config.pagination");
		if (param == NULL)
			param = "page";
		page_no = config_int(pagination, "start", 1, 0);
	}
	else if (ptype && strcmp(ptype, "offset") == 0)
	{
		param = config_string(pagination, "param", "config.pagination");
		if (param == NULL)
			param = "offset";
		limit_param = config_string(pagination, "limit_param", "config.pagination");
		if (limit_param == NULL)
			limit_param = "limit";
		limit = config_int(pagination, "limit", 100, 1);
		offset = config_int(pagination, "start", 0, 0);
	}
	else if (ptype && strcmp(ptype, "link_header") != 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("unknown pagination type \"%s\"", ptype),
				 errhint("Use next_url, page, offset or link_header.")));

	if (hdrs)
	{
		JsonbIterator *it = JsonbIteratorInit(&hdrs->root);
		JsonbValue	k,
					v;
		JsonbIteratorToken tok;

		while ((tok = JsonbIteratorNext(&it, &k, true)) != WJB_DONE)
		{
			char	   *name;

			if (tok != WJB_KEY)
				continue;
			name = pnstrdup(k.val.string.val, k.val.string.len);
			JsonbIteratorNext(&it, &v, true);
			if (v.type != jbvString)
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("config.headers values must be strings")));
			headers.plain = header_add(headers.plain, name, pnstrdup(v.val.string.val, v.val.string.len), "config.headers");
		}
	}
	headers.secret = api_credentials(creds);

	pagecxt = AllocSetContextCreate(CurrentMemoryContext, "dalgo http page", ALLOCSET_DEFAULT_SIZES);
	rowcxt = AllocSetContextCreate(CurrentMemoryContext, "dalgo http row", ALLOCSET_DEFAULT_SIZES);
	errcb.callback = fetch_error_context;
	errcb.arg = &ectx;
	errcb.previous = error_context_stack;
	error_context_stack = &errcb;

	memset(&pp, 0, sizeof(pp));
	pp.f = f;
	pp.s = s;
	pp.rowcxt = rowcxt;
	pp.pagecxt = pagecxt;
	pp.records_path = pointer_tokens(records);
	pp.want_next = next_pointer != NULL;
	pp.next_path = next_pointer ? pointer_tokens(next_pointer) : NIL;

	next_url = pstrdup(url);
	for (f->page = 1; next_url != NULL && f->page <= max_pages; f->page++)
	{
		char	   *request;
		HttpUrl    *u;
		char	   *body;
		MemoryContextCallback *cb;

		MemoryContextReset(pagecxt);
		MemoryContextSwitchTo(pagecxt);
		f->resp = palloc0(sizeof(HttpResponse));
		cb = palloc(sizeof(MemoryContextCallback));
		cb->func = response_free;
		cb->arg = f->resp;
		MemoryContextRegisterResetCallback(pagecxt, cb);

		if (param && limit_param)
			request = url_with_param(url_with_param(next_url, param, offset), limit_param, limit);
		else if (param)
			request = url_with_param(next_url, param, page_no);
		else
			request = next_url;
		ectx.display = NULL;
		u = http_get(f, request, &headers, "config.url");
		ectx.display = u->display;
		pp.u = u;
		if (f->resp->body == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_TEXT_REPRESENTATION),
					 errmsg("the response from %s is empty", u->display)));
		body = pg_any_to_server(f->resp->body, f->resp->len, PG_UTF8);
		page_parse(&pp, body, body == f->resp->body ? f->resp->len : strlen(body));
		fetch_progress(f, true);

		/* The next page. */
		MemoryContextSwitchTo(outer);
		if (next_pointer)
			next_url = pp.next && pp.next[0] ? url_resolve(u->url, pp.next) : NULL;
		else if (param && limit_param)
		{
			offset += pp.nrecords;
			if (pp.nrecords < limit)
				next_url = NULL;
		}
		else if (param)
		{
			page_no++;
			if (pp.nrecords == 0)
				next_url = NULL;
		}
		else if (ptype)			/* link_header */
		{
			char	   *next = f->resp->link ? link_next(f->resp->link) : NULL;

			next_url = next ? url_resolve(u->url, next) : NULL;
		}
		else
			next_url = NULL;
	}
	error_context_stack = errcb.previous;
	MemoryContextSwitchTo(outer);
	MemoryContextDelete(pagecxt);
	MemoryContextDelete(rowcxt);
}

/* Quote a sheet's title for A1 notation: 'It''s'. */
static char *
sheet_quote(const char *title)
{
	StringInfoData s;

	initStringInfo(&s);
	appendStringInfoChar(&s, '\'');
	for (const char *p = title; *p; p++)
	{
		if (*p == '\'')
			appendStringInfoChar(&s, '\'');
		appendStringInfoChar(&s, *p);
	}
	appendStringInfoChar(&s, '\'');
	return s.data;
}

/* A Sheets cell as a JsonbValue-backed datum of a column. */
static void
sheets_cell(Sink *s, int col, JsonbValue *v)
{
	s->slot->tts_values[col] = sink_value(&s->cols[col], v, &s->slot->tts_isnull[col]);
}

/* A google_sheets source: one range, its first row the header. */
static void
fetch_sheets(HttpFetch *f, Sink *s, Jsonb *config, Jsonb *creds)
{
	char	   *id = config_string(config, "spreadsheet_id", "config");
	char	   *range = config_string(config, "range", "config");
	char	   *api_key = config_string(creds, "api_key", "config.credentials");
	char	   *token = config_string(creds, "access_token", "config.credentials");
	char	   *base = pstrdup(google_sheets_url);
	char	   *eid;
	char	   *erange;
	HttpHeaders headers = {NIL, NIL};
	HttpUrl    *u;
	Jsonb	   *doc;
	JsonbValue	values;
	JsonbIterator *it;
	JsonbValue	row;
	JsonbIteratorToken tok;
	bool		header_done = false;
	int			nheader = 0;
	MemoryContext rowcxt;
	MemoryContextCallback *cb;
	FetchContext ectx = {f, NULL};
	ErrorContextCallback errcb;

	if (id == NULL || id[0] == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("a google_sheets source needs config.spreadsheet_id")));
	for (const char *p = id; *p; p++)
		if (!(isalnum((unsigned char) *p) || *p == '-' || *p == '_'))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("config.spreadsheet_id may contain only letters, digits, - and _")));
	if (api_key)
		headers.secret = header_add(headers.secret, "X-goog-api-key", api_key, "config.credentials.api_key");
	if (token)
		headers.secret = header_add(headers.secret, "Authorization", psprintf("Bearer %s", token),
									"config.credentials.access_token");
	while (strlen(base) > 0 && base[strlen(base) - 1] == '/')
		base[strlen(base) - 1] = '\0';
	eid = curl_easy_escape(f->curl, id, 0);
	f->resp = palloc0(sizeof(HttpResponse));
	cb = palloc(sizeof(MemoryContextCallback));
	cb->func = response_free;
	cb->arg = f->resp;
	MemoryContextRegisterResetCallback(CurrentMemoryContext, cb);
	f->page = 1;

	if (range == NULL || range[0] == '\0')
	{
		/* The first sheet: its title from the spreadsheet's metadata. */
		JsonbValue	title;

		u = http_get(f, psprintf("%s/v4/spreadsheets/%s?fields=sheets.properties.title", base, eid),
					 &headers, "dalgo.google_sheets_url");
		doc = parse_json(f, u);
		if (!json_pointer(&doc->root, "/sheets/0/properties/title", &title) || title.type != jbvString)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("spreadsheet %s has no sheet", id)));
		range = sheet_quote(pnstrdup(title.val.string.val, title.val.string.len));
	}
	erange = curl_easy_escape(f->curl, range, 0);
	u = http_get(f, psprintf("%s/v4/spreadsheets/%s/values/%s?majorDimension=ROWS", base, eid, erange),
				 &headers, "dalgo.google_sheets_url");
	curl_free(eid);
	curl_free(erange);
	errcb.callback = fetch_error_context;
	errcb.arg = &ectx;
	errcb.previous = error_context_stack;
	error_context_stack = &errcb;
	ectx.display = u->display;
	doc = parse_json(f, u);
	free(f->resp->body);
	f->resp->body = NULL;
	f->resp->cap = f->resp->len = 0;

	rowcxt = AllocSetContextCreate(CurrentMemoryContext, "dalgo http row", ALLOCSET_DEFAULT_SIZES);
	if (!json_pointer(&doc->root, "/values", &values))
	{
		/* An empty range has no "values". */
		sink_ready(s);
	}
	else
	{
		if (values.type != jbvBinary || !JsonContainerIsArray(values.val.binary.data))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("the response from %s has no array of values", u->display)));
		it = JsonbIteratorInit(values.val.binary.data);
		while ((tok = JsonbIteratorNext(&it, &row, true)) != WJB_DONE)
		{
			JsonbIterator *cit;
			JsonbValue	cell;
			int			col = 0;
			MemoryContext old;

			if (tok != WJB_ELEM)
				continue;
			if (row.type != jbvBinary || !JsonContainerIsArray(row.val.binary.data))
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("a row in the response from %s is not an array", u->display)));
			old = MemoryContextSwitchTo(rowcxt);
			if (!header_done)
			{
				cit = JsonbIteratorInit(row.val.binary.data);
				while ((tok = JsonbIteratorNext(&cit, &cell, true)) != WJB_DONE)
				{
					char	   *name;

					if (tok != WJB_ELEM)
						continue;
					if (cell.type == jbvString)
						name = pnstrdup(cell.val.string.val, cell.val.string.len);
					else if (cell.type == jbvNull)
						name = "";
					else
						name = TextDatumGetCString(sink_value(&(SinkColumn) {0}, &cell, &(bool) {false}));
					sink_add_column(s, name, strlen(name), false);
				}
				nheader = s->ncols;
				header_done = true;
				sink_ready(s);
			}
			else
			{
				int			ncells = JsonContainerSize(row.val.binary.data);

				/* Cells past the header get columns column_<n>. */
				if (ncells > s->ncols)
				{
					while (s->ncols < ncells)
						sink_add_column(s, "", 0, false);
					sink_ready(s);
				}
				sink_begin_row(s);
				cit = JsonbIteratorInit(row.val.binary.data);
				while ((tok = JsonbIteratorNext(&cit, &cell, true)) != WJB_DONE)
				{
					if (tok != WJB_ELEM)
						continue;
					sheets_cell(s, col, &cell);
					col++;
				}
				sink_insert(s);
				f->rows++;
				if ((f->rows & 1023) == 0)
				{
					CHECK_FOR_INTERRUPTS();
					fetch_progress(f, false);
				}
			}
			MemoryContextSwitchTo(old);
			MemoryContextReset(rowcxt);
		}
		if (!header_done)
			sink_ready(s);
	}
	(void) nheader;
	fetch_progress(f, true);
	error_context_stack = errcb.previous;
	MemoryContextDelete(rowcxt);
}

/* ---------------------------------------------------------------------------
 * The entry point
 * ---------------------------------------------------------------------------
 */

/* Free the curl handle with the fetch's memory (reset callback). */
static void
fetch_cleanup(void *arg)
{
	HttpFetch  *f = (HttpFetch *) arg;

	if (f->curl)
		curl_easy_cleanup(f->curl);
	f->curl = NULL;
}

/*
 * SQL: dalgo_internal.fetch_http_source(run_id uuid, staging_table text)
 * RETURNS bigint: fetch the run's google_sheets or api source into a new
 * table staging_table of its organization's warehouse schema, owned by the
 * warehouse role (text columns, jsonb for nested values); returns the rows
 * written.  Only a dalgo run worker may call it.
 */
Datum
dalgo_fetch_http_source(PG_FUNCTION_ARGS)
{
	pg_uuid_t  *run_id = PG_GETARG_UUID_P(0);
	char	   *staging = text_to_cstring(PG_GETARG_TEXT_PP(1));
	MemoryContext fetchcxt;
	MemoryContext old;
	MemoryContextCallback *cb;
	HttpFetch  *f;
	Sink	   *s;
	Oid			types[1] = {UUIDOID};
	Datum		args[1];
	char	   *source_type;
	Jsonb	   *config;
	Jsonb	   *creds = NULL;
	bool		isnull;
	int64		rows;

	if (!dalgo_in_run_worker())
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("google_sheets and api sources are fetched only by dalgo's run workers"),
				 errhint("Schedule the source (or use dalgo.run_schedule_now): a run worker syncs it.")));

	fetchcxt = AllocSetContextCreate(CurrentMemoryContext, "dalgo http fetch", ALLOCSET_DEFAULT_SIZES);
	old = MemoryContextSwitchTo(fetchcxt);
	f = palloc0(sizeof(HttpFetch));
	s = palloc0(sizeof(Sink));
	s->cxt = fetchcxt;
	s->table = staging;

	/* The run's source, its organization's schema, and its credentials. */
	args[0] = UUIDPGetDatum(run_id);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (SPI_execute_with_args("SELECT s.organization_id, s.id, s.source_type::text, s.config, "
							  "dalgo_internal.warehouse_schema_name(s.organization_id), "
							  "dalgo_internal.source_credentials(s.id) "
							  "FROM dalgo.sync_runs r JOIN dalgo.sources s ON s.id = r.source_id "
							  "WHERE r.id = $1 AND s.deleted_at IS NULL",
							  1, types, args, NULL, true, 1) != SPI_OK_SELECT || SPI_processed != 1)
		ereport(ERROR,
				(errcode(ERRCODE_NO_DATA_FOUND),
				 errmsg("the source of run %s no longer exists",
						DatumGetCString(DirectFunctionCall1(uuid_out, UUIDPGetDatum(run_id))))));
	{
		HeapTuple	tup = SPI_tuptable->vals[0];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		Datum		d;

		MemoryContextSwitchTo(fetchcxt);
		f->run_id = *run_id;
		f->organization_id = *DatumGetUUIDP(SPI_getbinval(tup, desc, 1, &isnull));
		f->source_id = *DatumGetUUIDP(SPI_getbinval(tup, desc, 2, &isnull));
		s->organization_id = f->organization_id;
		source_type = SPI_getvalue(tup, desc, 3);
		d = SPI_getbinval(tup, desc, 4, &isnull);
		config = isnull ? NULL : DatumGetJsonbPCopy(d);
		s->schema = SPI_getvalue(tup, desc, 5);
		d = SPI_getbinval(tup, desc, 6, &isnull);
		if (!isnull)
			creds = DatumGetJsonbPCopy(d);
		if (creds && !JsonContainerIsObject(&creds->root))
			creds = NULL;
	}
	SPI_finish();
	MemoryContextSwitchTo(fetchcxt);

	f->curl = curl_easy_init();
	if (f->curl == NULL)
		ereport(ERROR, (errcode(ERRCODE_OUT_OF_MEMORY), errmsg("could not start an HTTP client")));
	cb = palloc(sizeof(MemoryContextCallback));
	cb->func = fetch_cleanup;
	cb->arg = f;
	MemoryContextRegisterResetCallback(fetchcxt, cb);
	curl_easy_setopt(f->curl, CURLOPT_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(f->curl, CURLOPT_FOLLOWLOCATION, 0L);
	curl_easy_setopt(f->curl, CURLOPT_PROXY, "");
	curl_easy_setopt(f->curl, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(f->curl, CURLOPT_TIMEOUT_MS, (long) http_timeout * 1000L);
	curl_easy_setopt(f->curl, CURLOPT_ACCEPT_ENCODING, "");
	curl_easy_setopt(f->curl, CURLOPT_USERAGENT, "dalgo/" DALGO_VERSION);
	curl_easy_setopt(f->curl, CURLOPT_ERRORBUFFER, f->errbuf);
	curl_easy_setopt(f->curl, CURLOPT_WRITEFUNCTION, http_write);
	curl_easy_setopt(f->curl, CURLOPT_WRITEDATA, f);
	curl_easy_setopt(f->curl, CURLOPT_HEADERFUNCTION, http_header);
	curl_easy_setopt(f->curl, CURLOPT_HEADERDATA, f);
	curl_easy_setopt(f->curl, CURLOPT_OPENSOCKETFUNCTION, http_opensocket);
	curl_easy_setopt(f->curl, CURLOPT_OPENSOCKETDATA, f);
	curl_easy_setopt(f->curl, CURLOPT_NOPROGRESS, 0L);
	curl_easy_setopt(f->curl, CURLOPT_XFERINFOFUNCTION, http_xferinfo);
	curl_easy_setopt(f->curl, CURLOPT_XFERINFODATA, f);
	fetch_progress(f, true);

	if (strcmp(source_type, "google_sheets") == 0)
		fetch_sheets(f, s, config, creds);
	else if (strcmp(source_type, "api") == 0)
		fetch_api(f, s, config, creds);
	else
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s sources are not fetched over HTTP", source_type)));
	if (!s->created)
		sink_ready(s);
	sink_close(s);
	rows = f->rows;
	MemoryContextSwitchTo(old);
	MemoryContextDelete(fetchcxt);
	PG_RETURN_INT64(rows);
}
