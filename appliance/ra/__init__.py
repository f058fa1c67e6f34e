"""The registration authority: the one issuance pipeline, and the renew, rekey and revoke entry points."""
