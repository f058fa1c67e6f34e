"""Certificate status: what revocations lead to (CRLs, the OCSP responder, its memory, the revocation stamp)."""
