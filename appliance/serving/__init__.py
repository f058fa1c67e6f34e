"""`hsmca serve`: a supervisor over the HTTPS workers and the plain-HTTP listener (both on http_server.py) and
housekeeping."""
