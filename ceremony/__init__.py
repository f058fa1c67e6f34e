"""The offline root-key ceremony (issue 3). Imports kms/ only, never the online service."""
