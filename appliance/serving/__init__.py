"""`hsmca serve`: a supervisor over gunicorn (HTTPS), waitress (plain HTTP) and housekeeping."""
