"""mailrouter-admin -- administer the mail hub as a delegated admin.

SYNOPSIS
    mailrouter-admin [--config PATH] [--bind-dn WHO] [--password-file FILE]
                     [--use-service-account] [--json] COMMAND SUBCOMMAND [ARGS]

    From a checkout: ``bin/mailrouter-admin ...`` (same arguments).

WHO YOU ARE
    Every change is made by binding to LDAP *as the acting admin*; slapd's ACLs
    (ldap/acl.conf), not this program, decide what that person may do, and a
    refusal is reported as one line such as
    ``not allowed to add users in dc=example.org (bound as uid=...)``.

    --bind-dn WHO       a DN (``uid=admin,o=top``), a mail address
                        (``postmaster@example.org`` = ``uid=postmaster,dc=example.org,BASE``)
                        or a bare name (``admin`` = ``uid=admin,BASE``, a global admin).
                        Default: $MAILROUTER_BIND_DN.
    --password-file F   the bind password is the first line of F (``-`` = stdin).
                        Without it the password is prompted for (getpass).
                        There is no way to give a password in argv: argv is
                        readable by every local user.
    --use-service-account
                        bind with the config's read-only service account
                        (``[ldap] bind_dn`` + ``bind_password_file``); only
                        useful for list/show.  Used only when asked for.

    ``test address`` and ``test auth`` run the hooks' own code, which binds as
    the service account like Exim and the POP3 server do; they need no admin bind.

COMMANDS
    domain add DOMAIN [--description TEXT] | remove DOMAIN [--recursive]
           list [--counts] [PAGE] | show DOMAIN
    user   add ADDRESS [--new-password-file F | --no-password] [--quota Q] [--name TEXT]
                       [--disabled] [--admin]
           remove ADDRESS | list DOMAIN [PAGE] | show ADDRESS
           passwd ADDRESS [--new-password-file F] | quota ADDRESS QUOTA
           enable ADDRESS | disable ADDRESS | name ADDRESS TEXT
    alias  add ADDRESS TARGET... | set ADDRESS TARGET... (create or replace the targets)
           remove ADDRESS | list DOMAIN [PAGE] | show ADDRESS
           add-target ADDRESS TARGET... | remove-target ADDRESS TARGET...
    catchall set DOMAIN TARGET... | clear DOMAIN | show DOMAIN
           (the catch-all is the alias named "default" of the domain)
    setting get NAME | set NAME VALUE... | add NAME VALUE... | remove NAME VALUE... | list
           NAME is one of host_accept_relay, blacklisted_hosts, blacklisted_domains,
           blacklisted_senders, backup_mx_domains
    admin  grant ADDRESS [--domain DOMAIN]      domain admin (member of cn=admin,dc=DOMAIN,BASE;
                                                the group is created on the first grant)
           revoke ADDRESS [--domain DOMAIN]     (the group is deleted with its last member)
           grant --global NAME [--create [--new-password-file F]]
                                                global admin (member of cn=admin,BASE);
                                                --create adds the account uid=NAME,BASE first
           revoke --global NAME | list [DOMAIN]
    test   address ADDRESS [--exim] [--exim-config PATH [--mailrouter-bin DIR]]
                                   what Exim would do: router, targets, mailbox, quota state,
                                   from the lookup hook's own answers (mailrouter.lookup)
                                   in the routers' order; --exim also runs the system's
                                   ``exim4 -bt ADDRESS`` (its deployed /etc/exim4 config);
                                   --exim-config PATH runs ``exim4 -C PATH -bt`` instead, with
                                   this --config, the hooks in DIR (default: this Python's
                                   bin/) and a private throwaway spool (root only)
           auth ADDRESS [--secret-file F]   the login check POP3/IMAP/SMTP AUTH use
           smtp HOST[:PORT] [--from A] [--to A]... [--starttls] [--auth-user U --secret-file F] [--send]
           pop3 HOST[:PORT] USER [--secret-file F] [--tls]
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
    ``500K``, a byte count, or 0 (unlimited).  A multi-step operation (``user add
    --admin``, ``user remove`` of an admin, ``admin grant --global --create``,
    an import) that fails part-way undoes the steps already made.

PASSWORDS
    New passwords come from --new-password-file F (first line; ``-`` = stdin,
    read after the bind password when both use stdin) or a prompt asked twice;
    without a terminal there is no prompt, the command fails instead.
    ``user add`` stores a hash made with the config's ``auth.password_scheme``;
    ``user passwd`` uses the Password Modify operation (RFC 3062), so slapd
    hashes with its ``password-hash`` ({ARGON2}) and its ACLs decide: a user may
    change their own password, a domain admin those of their domain.  Both
    record the scheme in the user's ``mailPasswordScheme``, so that logins
    rehash only what needs it (README, Passwords).  New global admins
    (``admin grant --global --create``) get the no-lockout password policy.

OUTPUT
    Human-readable tables on stdout by default; ``--json`` prints one JSON
    document instead.  Errors are one line on stderr (also with --json), never
    a traceback; an import that finds invalid items lists each on its own line
    first.  ``import --progress`` (or a terminal on stderr and at least 20
    changes) draws a progress bar on stderr.

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
    mailrouter.admin.domains, .users, .aliases, .catchall, .settings, .admins,
    .imports (plan, diff, apply with a progress callback), .export (LDIF),
    .probes (route an address, test a login, an SMTP or POP3 session)

    Lists return a Page (items, total, offset, limit).  A multi-step operation
    that fails leaves its steps pending: AdminSession.rollback() (or leaving the
    with block) undoes them.  The library never imports the sandbox.

FILES / ENVIRONMENT
    --config PATH (default /etc/mailrouter/mailrouter.toml), $MAILROUTER_BIND_DN.

EXIT STATUS
    0   done (test auth/smtp/pop3: the login or every recipient was accepted)
    1   refused by slapd, or invalid input (nothing written), or a bad config;
        test auth/smtp/pop3: a login or recipient was refused
    2   usage error
    75  LDAP unavailable (no server answered), or the SMTP/POP3 server under
        test did not answer; try again later
"""
