/* logscrub.c -- keep password values out of an slapo-accesslog database.
 *
 * OpenLDAP 2.5's accesslog overlay records every value of every modification
 * in reqMod (and, with logold, every old value in reqOld): a password change,
 * whether a plain Modify (cleartext, or the {ARGON2} hash ppolicy made of it)
 * or the Password Modify extended operation (logged as the Modify it performs,
 * with the new hash), puts the password or its hash into the log.  2.5 has no
 * option to leave an attribute's values out (no "logattrs"), ACLs on the log
 * database do not apply to slapcat or to a copy of its files, and rewriting
 * records afterwards leaves the value on disk (freed LMDB pages are not
 * zeroed).  So this overlay sits on the LOG database and rewrites each new
 * record before the log database stores it:
 *
 *     reqMod: userPassword:= {ARGON2}$argon2i$...   becomes
 *     reqMod: userPassword:= <withheld>
 *
 * for userPassword, authPassword and pwdHistory (ppolicy's old hashes), with
 * any attribute options, in reqMod and reqOld.  The record keeps who changed
 * which entry's password when, and how (+ add, - delete, = replace); the value
 * never reaches the database.  Every other value is left as accesslog wrote it.
 *
 * A log used for delta-syncrepl must carry password values (a consumer
 * replays reqMod): put such a log in a database of its own, without this
 * overlay.
 *
 * One record per write, on the server that took it: a change that reached
 * this server by replication (syncrepl applies it as the database's rootdn on
 * its own connection, numbered below SLAPD_SYNC_SYNCCONN_OFFSET) was recorded
 * with its real actor by the server a client sent it to.  accesslog cannot
 * leave such changes out (the replication log must keep them), so this
 * overlay drops their records from the audit log: on a provider pair each
 * provider's log holds the writes it took, a read-only replica's stays empty.
 *
 * Configuration (slapd.conf), inside the log database's section:
 *     moduleload  /usr/local/lib/ldap/logscrub.so
 *     overlay     logscrub
 * cn=config: olcModuleLoad: /usr/local/lib/ldap/logscrub.so, and an entry
 *     olcOverlay=logscrub,olcDatabase={N}mdb,cn=config (objectClass
 *     olcOverlayConfig) below the log database.  It has no options.
 *
 * Built against the headers of the slapd it is loaded into (ldap/logscrub/build).
 */

#include "portable.h"

#include <stdio.h>
#include <ac/string.h>

#include "slap.h"

#define WITHHELD "<withheld>"

static slap_overinst logscrub;
static AttributeDescription *ad_reqMod, *ad_reqOld;

static const char *const secret_attrs[] = {
	"userPassword", "authPassword", "pwdHistory", NULL
};

/* Is "name[;options]:..." one of secret_attrs?  On a match, *head is the
 * length of "name[;options]:" plus the operation character, if any. */
static int
is_secret( struct berval *val, ber_len_t *head )
{
	char *colon = memchr( val->bv_val, ':', val->bv_len );
	char *semi;
	ber_len_t namelen, i;

	if ( colon == NULL )
		return 0;
	semi = memchr( val->bv_val, ';', colon - val->bv_val );
	namelen = ( semi ? semi : colon ) - val->bv_val;
	for ( i = 0; secret_attrs[i]; i++ ) {
		if ( strlen( secret_attrs[i] ) == namelen &&
			strncasecmp( secret_attrs[i], val->bv_val, namelen ) == 0 )
		{
			*head = colon - val->bv_val + 1;
			/* reqMod: "name:OP value"; reqOld: "name: value" */
			if ( *head < val->bv_len && val->bv_val[*head] != ' ' )
				(*head)++;
			return 1;
		}
	}
	return 0;
}

static void
scrub_attr( Attribute *a )
{
	unsigned i, j, k;
	ber_len_t head;
	struct berval *vals = a->a_vals;

	for ( i = 0, j = 0; i < a->a_numvals; i++ ) {
		if ( is_secret( &vals[i], &head ) && head < vals[i].bv_len ) {
			/* "name:OP" + " <withheld>", written over the old buffer's
			 * copy, then the old buffer (value included) is wiped */
			struct berval nv;
			nv.bv_len = head + 1 + STRLENOF( WITHHELD );
			nv.bv_val = ch_malloc( nv.bv_len + 1 );
			memcpy( nv.bv_val, vals[i].bv_val, head );
			nv.bv_val[head] = ' ';
			memcpy( nv.bv_val + head + 1, WITHHELD, STRLENOF( WITHHELD ) + 1 );
			memset( vals[i].bv_val, 0, vals[i].bv_len );
			ch_free( vals[i].bv_val );
			vals[i] = nv;
			/* two scrubbed values may now be equal: keep one (a multi-valued
			 * attribute must not hold duplicates, or the record is refused) */
			for ( k = 0; k < j; k++ ) {
				if ( vals[k].bv_len == nv.bv_len &&
					memcmp( vals[k].bv_val, nv.bv_val, nv.bv_len ) == 0 )
					break;
			}
			if ( k < j ) {
				ch_free( nv.bv_val );
				continue;
			}
		}
		vals[j++] = vals[i];
	}
	BER_BVZERO( &vals[j] );
	a->a_numvals = j;
}

static int
logscrub_add( Operation *op, SlapReply *rs )
{
	Attribute *a;

	if ( op->ora_e == NULL )
		return SLAP_CB_CONTINUE;
	if ( op->o_connid != 0 && SLAPD_SYNC_IS_SYNCCONN( op->o_connid ) ) {
		/* replicated in: not stored; release the CSN accesslog queued for it,
		 * as the backend would have */
		slap_graduate_commit_csn( op );
		rs->sr_err = LDAP_SUCCESS;
		send_ldap_result( op, rs );
		return rs->sr_err;
	}
	for ( a = op->ora_e->e_attrs; a; a = a->a_next ) {
		if ( a->a_desc == ad_reqMod || a->a_desc == ad_reqOld ) {
			/* accesslog shares one array for values and normalized values */
			if ( a->a_nvals != a->a_vals ) {
				ber_bvarray_free( a->a_nvals );
				a->a_nvals = a->a_vals;
			}
			scrub_attr( a );
		}
	}
	return SLAP_CB_CONTINUE;
}

static int
logscrub_db_open( BackendDB *be, ConfigReply *cr )
{
	const char *text;

	/* defined by the accesslog module, which must be loaded first */
	if ( slap_str2ad( "reqMod", &ad_reqMod, &text ) != LDAP_SUCCESS ||
		slap_str2ad( "reqOld", &ad_reqOld, &text ) != LDAP_SUCCESS )
	{
		Debug( LDAP_DEBUG_ANY, "logscrub: reqMod/reqOld unknown: "
			"load the accesslog module before logscrub\n" );
		return 1;
	}
	return 0;
}

int
init_module( int argc, char *argv[] )
{
	logscrub.on_bi.bi_type = "logscrub";
	logscrub.on_bi.bi_flags = SLAPO_BFLAG_SINGLE;
	logscrub.on_bi.bi_db_open = logscrub_db_open;
	logscrub.on_bi.bi_op_add = logscrub_add;
	return overlay_register( &logscrub );
}
