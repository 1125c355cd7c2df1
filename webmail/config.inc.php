<?php
/*
 * Roundcube (Debian's roundcube 1.6) for a mailrouter hub: IMAP through Dovecot
 * (logins checked by mailrouter-checkpassword), mail sent over the submission
 * port with STARTTLS + AUTH (checked by mailrouter-authd), both connections
 * verified against the hub's own CA.  Roundcube's database is one SQLite file.
 *
 * Install (production): copy to /etc/roundcube/config.inc.php (mode 0640,
 * root:www-data), set the host names below to the name in the hub's
 * certificate, put the CA that signed it at /etc/mailrouter/ca.pem, create
 * /etc/mailrouter/roundcube.des_key (24 random characters, 0640 root:www-data),
 * and create the database once:
 *   sqlite3 /var/lib/roundcube/mailrouter.db < /usr/share/roundcube/SQL/sqlite.initial.sql
 *   chown www-data: /var/lib/roundcube/mailrouter.db
 * Serve /var/lib/roundcube/public_html with php-fpm behind the web server that
 * terminates TLS (README: Webmail).
 *
 * mailrouter-sandbox renders this file: it replaces the values of exactly
 * the $config lines it names (mailrouter.sandbox.webmail) and nothing else.
 */
$config = [];

// Roundcube's own state (preferences, address book, sessions), not mail.
$config['db_dsnw'] = 'sqlite:////var/lib/roundcube/mailrouter.db?mode=0640';
$config['temp_dir'] = '/var/lib/roundcube/temp/';
$config['log_dir'] = '/var/log/roundcube/';

// IMAPS to Dovecot (dovecot/mailrouter.conf), certificate checked against the hub's CA.
$config['imap_host'] = 'ssl://mail.example.net:993';
$config['imap_conn_options'] = ['ssl' => [
    'verify_peer' => true, 'verify_peer_name' => true, 'cafile' => '/etc/mailrouter/ca.pem',
]];
// The submission port (exim/mailrouter.conf): STARTTLS, then AUTH as the user who
// logged in to IMAP.  Exim checks that the sender is that user or one of their aliases.
$config['smtp_host'] = 'tls://mail.example.net:587';
$config['smtp_user'] = '%u';
$config['smtp_pass'] = '%p';
$config['smtp_conn_options'] = ['ssl' => [
    'verify_peer' => true, 'verify_peer_name' => true, 'cafile' => '/etc/mailrouter/ca.pem',
]];

// Logins are whole addresses, sent as typed: the hub accepts only the canonical
// lower-case local@domain and answers anything else like a wrong password.
$config['username_domain'] = '';
$config['login_lc'] = 0;
$config['des_key'] = trim(file_get_contents('/etc/mailrouter/roundcube.des_key'));

$config['product_name'] = 'mailrouter webmail';
$config['support_url'] = '';
$config['skin'] = 'elastic';
$config['plugins'] = [];
$config['enable_spellcheck'] = false;
$config['enable_installer'] = false;
// Over TLS only (the web server in front terminates it): secure cookies, HSTS.
$config['use_https'] = true;
$config['session_lifetime'] = 30;
