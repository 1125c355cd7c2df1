"""mailrouter: an LDAP-driven multi-domain mail hub on stock Exim 4, OpenLDAP and popa3d.

Nothing happens at import time: every executable builds its configuration in
``main()`` and passes it down.
"""

__version__ = "0.1.0"
