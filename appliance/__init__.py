"""hsmca: a private CA whose every signature is made inside an HSM or a cloud KMS."""

__version__ = "0.1.0"
