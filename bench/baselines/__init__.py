"""The two relays the app is measured against, served by the same servers as the app."""
