"""Provisioners prove who is asking and turn it into a request for the policy engine."""

from appliance.provisioners.base import Provisioner, SignAuthorization
from appliance.provisioners.jwk import JWKProvisioner
from appliance.provisioners.registry import Provisioners

__all__ = ["JWKProvisioner", "Provisioner", "Provisioners", "SignAuthorization"]
