"""Every exit code of every executable, spelled once.

The caller decides what a code means, so the codes are grouped by caller.
Exim bounces on any pipe exit code but 75/73 (``temp_errors``); pam_exec turns
any non-zero code into a failed login; checkpassword servers use 1/2/111.
Each executable's module docstring says which of these it uses and when.
"""

# sysexits.h, as Exim's pipe transport and ${run} callers read them
EX_OK = 0
EX_NOTFOUND = 1  # mailrouter-lookup: LDAP answered "no such thing"
EX_REFUSED = 1  # interactive tools and pam-auth: refused / invalid
EX_USAGE = 2  # interactive tools, pam-auth and userdb: misuse
EX_TEMPFAIL = 75  # try again later (sysexits EX_TEMPFAIL)
# mailrouter-deliver: the message can never fit the quota.  Not sysexits' 77
# (EX_NOPERM): Exim annotates every code 64..78 in its log and bounces ("returned
# 77 (could mean permission denied)"), which sent admins hunting for a permission
# problem.  100 is qmail's "permanent failure" and carries no annotation; the
# hook's one stdout line says why (log_fail_output, return_fail_output).
EX_TOOBIG = 100

# checkpassword protocol (qmail, Dovecot 2.3)
CHECKPASSWORD_REFUSED = 1
CHECKPASSWORD_MISUSE = 2
CHECKPASSWORD_TEMPFAIL = 111
