"""Small local emulators of cloud KMS APIs for the integration tests; none of them is the vendor's service."""
