"""The API's routes, one router per audience: Nightscout clients, the daemon's own status,
probes and Prometheus, and people with a browser.

Each router takes what it needs through dependencies (:data:`api.context.Context`,
:data:`api.access.RequestAccess`); none holds state of its own.
"""
