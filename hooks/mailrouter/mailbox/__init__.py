"""Everything that touches a mailbox, for every delivery front end.

``spool`` (paths and the storage-id rule), ``addressdata`` (the router's
``$address_data`` line), ``usage`` (one mailbox-size rule), ``locking``,
``mbox``, ``maildir`` and ``store`` (the one ``deliver`` entry point).
Nothing here imports LDAP code (``ldap3``, ``directory``, ``auth``,
``routing``): the delivery hook runs as the storage account with no LDAP
access, and ``tests/test_mailbox.py`` keeps it so.
"""
