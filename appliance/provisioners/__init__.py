"""Provisioners prove who is asking and turn the credential into one issuance request (request.py)."""

from appliance.provisioners.base import Provisioner, TokenCredential, TokenGrant, TokenProvisioner
from appliance.provisioners.registry import Provisioners, build, register
from appliance.provisioners.request import AuditNote, IssuanceRequest

__all__ = ["AuditNote", "IssuanceRequest", "Provisioner", "Provisioners", "TokenCredential", "TokenGrant",
           "TokenProvisioner", "build", "register"]
