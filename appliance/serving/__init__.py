"""`hsmca serve`: a supervisor over gunicorn (HTTPS), the plain-HTTP listener (http_server.py) and housekeeping."""
