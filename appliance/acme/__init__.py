"""ACME (RFC 8555, RFC 9773 ARI): the registration and validation side of the protocol.

`service.ACMEService` is the state machine the web layer (appliance/api/acme.py) drives; accounts, nonces,
orders, authorizations and challenges live in the database (appliance/store/acme.py), so any replica can
answer any request. Challenges are validated off the request path (`validator.py`, calling `validation.py`).
"""
