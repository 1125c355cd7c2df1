"""mailrouter-admin -- administer the mail hub as a delegated admin.

SYNOPSIS
    mailrouter-admin [--config PATH] [--bind-dn WHO] [--password-file FILE]
                     [--use-service-account] [--json] COMMAND SUBCOMMAND [ARGS]

    From a checkout: ``bin/mailrouter-admin ...`` (same arguments).  Against the
    sandbox: ``eval "$(bin/mailrouter-sandbox env --dir DIR)"`` first, and every
    command below needs no --config, --bind-dn or password.

WHO YOU ARE
    Every change is made by binding to LDAP *as the acting admin*; slapd's ACLs
    (ldap/acl.conf), not this program, decide what that person may do, and a
    refusal is reported as one line such as
    ``not allowed to add users in dc=example.org (bound as uid=...)``.

    --bind-dn WHO       a DN (``uid=admin,o=top``), a mail address
                        (``postmaster@example.org`` = ``uid=postmaster,dc=example.org,BASE``)
                        or a bare name (``admin`` = ``uid=admin,BASE``, a global admin).
                        Default: $MAILROUTER_BIND_DN.
    --password-file F   the bind password is the first line of F (``-`` = stdin;
                        default $MAILROUTER_PASSWORD_FILE).
                        Without either the password is prompted for (getpass).
                        There is no way to give a password in argv: argv is
                        readable by every local user.
    --use-service-account
                        bind with the config's read-only service account
                        (``[ldap] bind_dn`` + ``bind_password_file``); only
                        useful for list/show.  Used only when asked for.

    ``test address`` and ``test auth`` run the hooks' own code, which binds as
    the service account like Exim and the POP3 server do; they need no admin bind.
    ``queue`` runs Exim and ``completion`` nothing: neither binds nor reads the config.

COMMANDS
    domain add DOMAIN [--description TEXT] | remove DOMAIN [--recursive]
           list [--counts] [PAGE] | show DOMAIN
           disable DOMAIN | enable DOMAIN      (global admins) disabled, a domain keeps all
                                               its entries and mailboxes, but mail to it is
                                               refused (550 5.2.1) and its users cannot log in
           ratelimit DOMAIN LIMIT              outbound limit of its users without their own
                                               (LIMIT below; the domain's admins, global admins)
    user   add ADDRESS [--new-password-file F | --no-password] [--quota Q] [--name TEXT]
                       [--disabled] [--admin] [--format mbox|maildir]
                       (says so when an alias of the same name will take the user's mail;
                       without --format the hub's spool.format applies)
           remove ADDRESS                      (the mailbox stays on disk: the answer says where)
           list [DOMAIN] [PAGE]                every domain you can see without DOMAIN; each
                                               row with its quota, the mailbox's use and format
           show ADDRESS                        status, quota and use, the mailbox delivery
                                               writes, admin rights
           passwd ADDRESS [--new-password-file F] | quota ADDRESS QUOTA
           enable ADDRESS | disable ADDRESS | name ADDRESS TEXT
           ratelimit ADDRESS LIMIT             outbound limit of authenticated submissions:
                                               LIMIT is COUNT / PERIOD (100/1h: recipients per
                                               period; s, m, h, d, w), unlimited, or inherit
                                               (remove: the domain's, then default_rate_limit
                                               applies).  The domain's admins and global admins;
                                               never the user.  Shown by user show.
           format ADDRESS mbox|maildir         switch the mailbox format; refused while the
                                               current one holds mail (nothing is converted,
                                               nothing left behind)
           rename ADDRESS NEW-ADDRESS          within the domain: the entry, its admin rights,
                                               alias targets naming it, and its mailbox (moved
                                               when that is safe here; else the answer says what
                                               to move)
           vacation show|off ADDRESS           the out-of-office reply (off keeps the text)
           vacation set ADDRESS --text TEXT|--text-file F [--subject S] [--start D] [--end D]
                                               switch it on; dates YYYY-MM-DD[THH:MM] UTC
           sieve show|remove ADDRESS | sieve set ADDRESS FILE
                                               the Sieve filter; refused with the reason (our
                                               rules, or Exim's parser quoted) when it does not
                                               parse or breaks a rule (mailrouter.rules)
    alias  add ADDRESS TARGET... | set ADDRESS TARGET... (create or replace the targets)
           remove ADDRESS | list DOMAIN [PAGE] | show ADDRESS
           add-target ADDRESS TARGET... | remove-target ADDRESS TARGET...
           A change that makes an alias reach itself again -- directly, through other
           aliases or a catch-all -- is refused ("alias loop: a -> b -> a").
    catchall set DOMAIN TARGET... | clear DOMAIN | show DOMAIN
           (the catch-all is the alias named "default" of the domain)
    setting get NAME | set NAME VALUE... | add NAME VALUE... | remove NAME VALUE... | list
           NAME is one of host_accept_relay, blacklisted_hosts, blacklisted_domains,
           blacklisted_senders, backup_mx_domains, default_rate_limit (one LIMIT: the
           outbound limit of users whose entry and domain set none; unset = unlimited),
           vacation_interval (one value, an Exim
           time such as 7d: the default; one vacation reply per sender per interval)
    admin  grant ADDRESS [--domain DOMAIN]      domain admin (member of cn=admin,dc=DOMAIN,BASE;
                                                the group is created on the first grant)
           revoke ADDRESS [--domain DOMAIN]     (the group is deleted with its last member)
           grant --global NAME [--create [--new-password-file F]]
                                                global admin (member of cn=admin,BASE);
                                                --create adds the account uid=NAME,BASE first
           revoke --global NAME | list [DOMAIN]
    audit  [--domain D] [--since T] [--actor A]
                                   who changed what, from slapd's own audit log (cn=accesslog):
                                   each successful add, change, rename or removal by anyone
                                   (this tool, the web, ldapmodify), oldest first: time, actor,
                                   operation, target, changed attributes (password values are
                                   never logged: "<withheld>").  Global admins see every record,
                                   a domain's admins those about their domain; T is 7d, 12h,
                                   30m (ago) or an ISO date/time (UTC); A a DN, an address or a
                                   global admin's name.  More than 1000 matches: narrow it.
    test   address ADDRESS [--exim] [--exim-command CMD]
                   [--exim-config PATH [--mailrouter-bin DIR]]
                                   what Exim would do: router, targets, mailbox, quota and use,
                                   from the lookup hook's own answers (mailrouter.lookup)
                                   in the routers' order; --exim also runs
                                   ``exim4 -bt ADDRESS`` -- the system's Exim (its deployed
                                   /etc/exim4 config), or the command line in --exim-command or
                                   $MAILROUTER_EXIM (the sandbox's, from its env);
                                   --exim-config PATH runs ``exim4 -C PATH -bt`` instead, with
                                   this --config, the hooks in DIR (default: this Python's
                                   bin/) and a private throwaway spool (root only) -- each only
                                   when PATH does not define that macro itself.  A remote
                                   address Exim cannot route gets a "note" saying why.
           auth ADDRESS [--secret-file F]   the login check POP3/IMAP/SMTP AUTH use
           smtp HOST[:PORT] [--from A] [--to A]... [--starttls] [--auth-user U --secret-file F] [--send]
           pop3 HOST[:PORT] USER [--secret-file F] [--tls]
                   smtp and pop3 verify TLS against the system's CAs, or --ca-file FILE (the
                   sandbox's ca_cert, with its tls_host name); --insecure verifies nothing
    queue  list | show ID [--body] | flush [--frozen] | thaw ID | remove ID
                                   Exim's queue, through Exim's own options (-bp, -Mvh/-Mvl,
                                   -qf, -Mt, -Mrm) of the system's Exim or --exim-command /
                                   $MAILROUTER_EXIM; root or an Exim admin user
    completion bash                the bash completion script, generated from this parser
    import qmail DIR --domain DOMAIN [--assign FILE] [--apply] [--skip-invalid] [--progress]
                     DIR/users/assign (=local:... lines become users), DIR/alias/.qmail-* and
                     DIR/.qmail-* (forwarding lines become aliases, .qmail-default the catch-all)
           aliases FILE --domain DOMAIN [--apply] [--skip-invalid] [--progress]
                     /etc/aliases syntax ("name: target, target", continuation lines)
           A dry run (the default) prints the plan and writes nothing; --apply writes it.
           Importing twice changes nothing the second time.  Program (|cmd), file (/path)
           and :include: deliveries are never imported: an input holding one is refused as
           a whole unless --skip-invalid (then those items are listed and left out).
    export ldif DOMAIN [--output FILE]    the domain's entries (password hashes are not
                                          readable by anyone, so not exported)

    PAGE of a list: [--contains TEXT] [--offset N] [--limit N].  --contains keeps the
    rows whose name (domain, local part, alias name) contains TEXT; --offset/--limit
    cut the sorted list, the table then ends with "rows A-B of TOTAL" and --json
    prints {"items", "total", "offset", "limit"} instead of the list of rows.

INPUT RULES (checked before anything is written)
    Domains are IDNA: a U-label (bücher.example) is converted to its A-label
    (xn--bcher-kva.example).  Local parts are lower-cased and must be RFC 5321
    sized (<= 64 octets) and use only [a-z0-9._+=-] without a leading, trailing
    or double dot.  Alias targets must be addresses; ``|command``, ``/file``,
    ``:include:`` and ``:fail:``-style items are refused.  Quotas: ``32M``, ``1G``,
    ``500K``, a byte count, or 0 (unlimited).  Rate limits: COUNT / PERIOD with
    COUNT 2..1000000 and PERIOD one number and unit, 1s..31d, any spacing and
    case (``100/1H`` is stored ``100 / 1h``), or ``unlimited``.  A multi-step operation (``user add
    --admin``, ``user remove`` of an admin, ``admin grant --global --create``,
    an import) that fails part-way undoes the steps already made.

PASSWORDS
    New passwords come from --new-password-file F (first line; ``-`` = stdin,
    read after the bind password when both use stdin) or a prompt asked twice;
    without a terminal there is no prompt, the command fails instead.
    ``user add`` and ``user passwd`` store a hash made with the config's
    ``auth.password_scheme`` (as mailrouter-passwd does); slapd's ACLs decide
    who may write it: a user their own password, a domain admin those of their
    domain.  Both record the scheme in the user's ``mailPasswordScheme``, so
    that logins rehash only what needs it (README, Passwords).  New global
    admins (``admin grant --global --create``) get the no-lockout password policy.

OUTPUT
    Human-readable tables on stdout by default; ``--json`` prints one JSON
    document instead, in one shape:
      success   an object (a change: {"ok": true, "message", ...; "changed": false
                when it found the value in place and wrote nothing}) or a list
                (a paged list: {"items", "total", "offset", "limit"})
      error     {"error": MESSAGE, "code": EXIT_CODE, "kind": KIND, "field": FIELD}
                with the exit code below; KIND is invalid, refused, not_found,
                exists, conflict, usage, unavailable, config or failed
      numbers   are numbers (uid, gid, bytes, ports); people are named as
                addresses (``local@domain``, or NAME for a global admin
                ``uid=NAME,BASE``), DNs only under keys ending in ``dn``/``dns``
      quota     {"limit": "10M", "limit_bytes": 10485760, "used_bytes": 2048}:
                limit_bytes 0 = unlimited, null when garbled; used_bytes null
                when the mailbox cannot be read where this runs
    Errors are also one line on stderr (with --json too), never a traceback; an
    import that finds invalid items lists each on its own line first.
    ``import --progress`` (or a terminal on stderr and at least 20 changes) draws
    a progress bar on stderr.

LIBRARY
    The commands are a thin layer (mailrouter.admin.cli) over an operations
    library that a web front end calls the same way.  Each function takes a bound
    session first and returns JSON-ready data (what --json prints); it raises only
    AdminError (``kind``: invalid, refused, not_found, exists, conflict; ``field``
    for invalid input), DirectoryUnavailable or TemporaryFailure:

        from mailrouter.admin import session, users
        with session.AdminSession(config, session.resolve_login(config, who), password) as s:
            users.add_user(s, "ann@example.org", None, quota="1G")

    mailrouter.admin.session    AdminSession (bind, undo, commit/rollback), resolve_login, Page
    mailrouter.admin.normalise  the input rules above
    mailrouter.admin.domains, .users, .aliases, .catchall, .settings, .admins, .ratelimits,
    .imports (plan, diff, apply with a progress callback), .export (LDIF),
    .probes (route an address, test a login, an SMTP or POP3 session),
    .queue (Exim's queue; takes the Exim command line, see .eximcmd)

    Lists return a Page (items, total, offset, limit).  A multi-step operation
    that fails leaves its steps pending: AdminSession.rollback() (or leaving the
    with block) undoes them.  The library never imports the sandbox.

FILES / ENVIRONMENT
    --config PATH (default $MAILROUTER_CONFIG, else /etc/mailrouter/mailrouter.toml),
    $MAILROUTER_BIND_DN, $MAILROUTER_PASSWORD_FILE, $MAILROUTER_EXIM (the Exim
    command line; default /usr/sbin/exim4).  ``mailrouter-sandbox env`` prints
    all four for a sandbox.  Man page: mailrouter-admin(8); bash completion:
    ``mailrouter-admin completion bash`` (bin/install-deps installs both).

EXIT STATUS
    0   done (test auth/smtp/pop3: the login or every recipient was accepted)
    1   refused by slapd, or invalid input (nothing written), or a bad config;
        test auth/smtp/pop3: a login or recipient was refused
    2   usage error
    75  LDAP unavailable (no server answered), or the SMTP/POP3 server under
        test did not answer; try again later (a TLS certificate that does not
        verify is 1: it is an answer)
"""
