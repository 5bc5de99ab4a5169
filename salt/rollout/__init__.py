"""Part of salt; see salt/ARCHITECTURE.md."""
