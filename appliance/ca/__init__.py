"""The CA proper: builds certificates from decided profiles, records before it signs, and holds the intermediates."""
